"""Task families: pure samplers ``key -> Task``."""

from jmeta.tasks.base import Batch
from jmeta.tasks.base import Task
from jmeta.tasks.base import TaskSampler
from jmeta.tasks.base import sample_tasks
from jmeta.tasks.base import validate_tasks
from jmeta.tasks.episodes import make_episode_sampler
from jmeta.tasks.linear import make_linear_sampler
from jmeta.tasks.sinusoid import SinusoidFamily
from jmeta.tasks.sinusoid import make_sinusoid_sampler
from jmeta.tasks.sinusoid import sinusoid_curve
