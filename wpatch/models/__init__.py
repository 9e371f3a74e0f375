"""Which Whisper to patch: model specs (openai names, checkpoints, CTranslate2 folders) and the offline weights
that install from the package index (`loading`); the CTranslate2 reader (`ctranslate2`)."""
