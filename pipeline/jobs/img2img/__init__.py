"""img2img and inpainting (A1111's /sdapi/v1/img2img): prepare.py validates a request before it is queued,
run.py runs it on the worker; resize.py: the four resize modes; masks.py: mask preparation, only-masked
geometry, fill."""
