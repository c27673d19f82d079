"""Task families: pure samplers ``key -> Task``."""

from jmeta.tasks.base import Batch, Task, TaskSampler, sample_tasks, validate_tasks
from jmeta.tasks.batches import make_batch_sampler
from jmeta.tasks.episodes import make_episode_sampler
from jmeta.tasks.linear import make_linear_sampler
from jmeta.tasks.sinusoid import SinusoidFamily, make_sinusoid_sampler, sinusoid_curve
