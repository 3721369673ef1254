"""Schedules: diffusion noise schedules (1000-step definitions and their T-step subsamples) and learning rates."""
from schedulers.lr_schedules import LR_SCHEDULES, lr_factor
from schedulers.noise_schedules import BASE_TIMESTEPS, SCHEDULES, Schedule, make_schedule

__all__ = ["BASE_TIMESTEPS", "LR_SCHEDULES", "SCHEDULES", "Schedule", "lr_factor", "make_schedule"]
