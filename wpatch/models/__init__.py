"""Which Whisper to patch: model specs (openai names, checkpoints, CTranslate2 folders, Hugging Face folders and hub
ids) and the offline weights that install from the package index (`loading`); the CTranslate2 reader
(`ctranslate2`); the Hugging Face transformers reader (`huggingface`)."""
