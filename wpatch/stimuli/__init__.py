"""The speech a run patches: pairs files read into items (`pairs_file`), speech synthesis and its clip cache
(`tts`), recordings and log-mels (`audio`, `melcache`), which clips a model hears (`screening`), and the builder
of the packaged pair sets (`sets`)."""
