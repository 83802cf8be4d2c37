"""Jobs: one module (or sub-package) per endpoint and script, each reading as its algorithm; common.py holds
the job context, the result and the one routine that runs a sampling pass; dispatch.py is the way in."""
