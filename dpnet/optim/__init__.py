"""Update rules on the flat parameter vector, and learning-rate schedules."""
from . import optimizers, schedules
from .optimizers import (OPTIMIZERS, AdaGrad, Adam, AMSGrad, Momentum, Nesterov, Optimizer,
                         RMSProp, SGD, get_optimizer, optimizer_from_config)
from .schedules import Anneal, Constant, ExponentialDecay, Schedule, StepDecay, as_schedule

__all__ = ["optimizers", "schedules", "OPTIMIZERS", "AdaGrad", "Adam", "AMSGrad", "Momentum",
           "Nesterov", "Optimizer", "RMSProp", "SGD", "get_optimizer", "optimizer_from_config",
           "Anneal", "Constant", "ExponentialDecay", "Schedule", "StepDecay", "as_schedule"]
