"""img2img and inpainting (A1111's /sdapi/v1/img2img): `prepare_img2img` validates a request before it is
queued, `run_img2img` runs it on the worker. resize.py: the four resize modes; masks.py: mask preparation,
only-masked geometry, fill; run.py: the algorithm."""
from .prepare import Img2ImgProcessing, prepare_img2img
from .run import run_img2img

__all__ = ["Img2ImgProcessing", "prepare_img2img", "run_img2img"]
