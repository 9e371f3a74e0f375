"""A run's life on disk: its folder (`folder`: lock, settings, signals, fault points), the prediction writer
(`writer`: parts, resume, merge, then the analysis), the settings a run's rows depend on (`settings`) and the
progress bar (`progress`).

`wpatch.run` is this package and also the function that runs an experiment from Python (`wpatch.api.run`): the
package's module type is made callable, so `wpatch.run(...)` works whether or not a submodule such as
`wpatch.run.writer` has been imported (importing one sets the attribute `wpatch.run` to this package).
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from wpatch.api import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
