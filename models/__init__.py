from models.video_dit import DiT_models, VideoDiT, build_model, build_video_model

__all__ = ["DiT_models", "VideoDiT", "build_model", "build_video_model"]
