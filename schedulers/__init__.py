"""Diffusion noise schedules: 1000-step definitions and their T-step subsamples."""
from schedulers.noise_schedules import BASE_TIMESTEPS, SCHEDULES, Schedule, make_schedule

__all__ = ["BASE_TIMESTEPS", "SCHEDULES", "Schedule", "make_schedule"]
