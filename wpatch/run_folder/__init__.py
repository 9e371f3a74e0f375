"""A run's life on disk: its folder (`folder`: lock, settings, signals, fault points), the prediction writer
(`writer`: parts, resume, merge, then the analysis), the settings a run's rows depend on (`settings`) and the
progress bar (`progress`)."""
