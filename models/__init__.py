from models.registry import (MODELS, build_model, build_video_model, check_model_config, load_initial_weights,
                             model_input_shape)

__all__ = ["MODELS", "build_model", "build_video_model", "check_model_config", "load_initial_weights",
           "model_input_shape"]
