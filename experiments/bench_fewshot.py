"""Benchmark of few-shot classification: conv4 MAML and prototypical networks (JSON + table).

Command:  jmeta run bench-fewshot
Runtime:  about 10 minutes on a 2-core laptop CPU (4 with ``inner_steps=1``); each row
          compiles once (10-25 s). The rows of one inner-step count, the PyTorch loop
          among them, then run in alternation, one step each per round, until every row
          has at least three timed steps and ``min_seconds`` in all; each reports its
          median. Machine drift (this 2-core VM moves by 10-30% over minutes) then hits the
          PyTorch loop and jmeta alike, so their ratio is the stable number. The JSON and
          table are rewritten after every group of rows: a run stopped part-way keeps them.
Expected: meta-steps/s and tasks/s of conv4 MAML (5-way 1-shot, 15 queries, meta-batch
          32; 1 and 5 inner steps; second and first order) and of prototypical networks at
          the same episode shape; XLA's FLOP count per step and the fraction of this
          machine's measured float32 matmul peak that it reaches; and a learn2learn-style
          PyTorch MAML loop on the same workload for the ratio (on CUDA when JAX runs on
          a GPU); with ``learn2learn=PATH`` (an unpacked learn2learn source, see
          ``_learn2learn.py``) or an installed learn2learn that imports, learn2learn's own
          MAML too, in the same rounds. Each meta-learner runs once per entry of
          ``task_chunks`` (0: one vmap over tasks) and of ``convs`` (``im2col``: one matmul
          per convolution, the fast path on CPU; ``xla``: ``lax.conv``). On a GPU:
          ``convs=im2col,xla task_chunks=0``.
          MAML runs every inner step in one scan (``peel_first_step=False``, the shorter
          compile for conv4); its FLOP count still counts every step.

This is the measurement the few-shot issue's speed target is judged by (at least 1.5x
learn2learn's meta-steps/s, for which the PyTorch loop stands in; compile under 15 s);
the numbers it writes say where the current implementation stands.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jmeta import algorithms
from jmeta.checkpoint import atomic_write_json, atomic_write_text
from jmeta.experiments._learn2learn import load_maml
from jmeta.models import conv4_learner
from jmeta.ops import CONV_IMPLEMENTATIONS
from jmeta.objective import make_meta_learner
from jmeta.outer import default_optimizer, make_meta_step
from jmeta.protonet import make_protonet
from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.tasks import make_episode_sampler
from jmeta.validation import check_choice, check_fields


# Alternatives measured on the 2-core development machine (AMD EPYC, jax 0.10.2, XLA:CPU;
# 2026-11-26), conv4 MAML 1 inner step, 5-way 1-shot, 15 queries, meta-batch 32. Kept here
# (and written into the JSON) because they decided the implementation; times move by
# about 10% from run to run on this machine.
NOTES = [
    "lax.conv under vmap with per-task weights (grouped convolution on XLA:CPU): 142 s per step",
    "nine shifted matmuls per 3x3 conv, autodiff VJP, nn.max_pool: 10.9 s per step, compile 25 s",
    "im2col (one matmul), hand-written VJP whose input gradient is a convolution of the cotangent, "
    "reshape max-pool, pooling before the batch-norm affine map: 4.9 s, compile 11 s",
    "the same in chunks of tasks (lax.map of a vmap) with the gradient taken outside the map: 3.7 s "
    "(the backward pass then holds every chunk's activations)",
    "gradient taken inside the map, chunks of 1 / 2 / 4 tasks: 2.6 / 2.4 / 2.7 s (PyTorch loop 2.9-3.5 s)",
    "rejected, slower in the step: channels-first layout (CNHW), input gradient as nine shifted matmuls "
    "(+0.1-0.2 s), patches stacked on a leading axis with einsum (+0.8 s), first layer as broadcast "
    "products (+1 s), patches by gather (+0.7 s), row patches (K=192) times a (192, 192) kernel with "
    "output-side shifts and its own VJP (+0.5 s); XLA flags xla_cpu_use_onednn / xla_cpu_use_xnnpack: no change",
    "profile of the chunked step (chunks of 2): the 28x28 block's normalisation, bias and pooling "
    "passes about 0.7 s of 2.5 s of ops; the 14x14 layer's im2col concatenations about as much as its matmuls",
    "first block's batch-norm statistics from the 9x9 covariance of the input patches, bias after pooling "
    "(conv_norm_relu_pool): step 2.3 -> 2.1 s, ops 2.48 -> 1.87 s; written as patches @ kernel with "
    "autodiff it was 2.7 s (XLA transposed the full-resolution cotangent for the kernel gradient)",
    "inner loop vmapped over all 32 tasks and differentiated by one vjp, only the query passes in chunks "
    "of 2: rejected, 5 inner steps 5.0 s against 3.4-4.4 s with the whole task in each chunk",
    "lax.conv (conv4_learner(conv='xla')) inside the chunk map: 34.7 s per step in chunks of 1 task, "
    "55.5 s in chunks of 2 (XLA:CPU's slow path for convolution gradients in loops, jax-ml/jax#12868)",
    "compile options for 5 inner steps in chunks of 2 (20 s timed each): default 17.8 s compile, 3.53 s "
    "per step; xla_backend_optimization_level=1: 15.8 s, 3.71 s; with xla_llvm_disable_expensive_passes "
    "too: 15.1 s, 3.98 s; level 0: 12.3 s, 12.8 s. Left at the default",
    "glibc malloc kept off mmap (MALLOC_MMAP_MAX_=0, large MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_): im2col of "
    "(150, 14, 14, 64) alone 53 -> 13 ms (a fresh output buffer is page-faulted in at ~1.3 GB/s), but the "
    "meta-step only 2.05 s (1 step, chunks of 2; 2.3-2.5 s without) and 3.63 s (5 steps): a process-wide "
    "setting that would speed the PyTorch loop's allocations too, so not adopted",
    "allocator settings measured on both sides (separate processes, 1 / 5 steps): defaults jmeta 2.27 / 3.84 s, "
    "PyTorch loop 3.43 / 5.34 s; GLIBC_TUNABLES=glibc.malloc.hugetlb=1: 1.97 / 3.52 and 2.42 / 5.04; malloc off "
    "mmap: 2.01 / 4.02 and 2.56 / 4.97. The PyTorch loop moves most, which is why rows now alternate in one run",
    "im2col as nine slices concatenated on the channel axis: XLA:CPU never fuses a minor-axis concatenation or one "
    "of more than eight operands, so each slice was materialised and then copied again; as stacks of three on "
    "non-minor axes it is one fused pass: patches of (150, 14, 14, 64) 61 -> 29 ms, step 2.16 -> 2.04 s "
    "(medians of alternating runs, 1 step, chunks of 2)",
    "the kernel gradient patches.T @ cotangent with its own VJP (both of its gradients are SAME convolutions) "
    "instead of autodiff's transpose of the patch matrix and scatter through the slices: 5 steps 3.92 -> 3.51 s, "
    "1 step 2.40 -> 2.21 s (second order differentiates it once per inner step)",
    "rejected: inner scan fully unrolled (5 steps 3.43 vs 3.82 s, compile 30.8 vs 24.4 s); unroll=2 (4.05 s, "
    "compile 39 s); two independent chunks per map iteration so the thunk executor could overlap them (2.19 s, "
    "no gain; chunks of 1: 3.07 s); Winograd F(2x2, 3x3) for the 14x14 layer (layer alone 1.15 vs 1.08 s: its 16 "
    "batched K=64 matmuls reach ~94 GFLOP/s and its kernel gradient runs on Eigen); "
    "xla_cpu_enable_concurrency_optimized_scheduler (2.26 vs 2.23 s)",
    "where the 1-step time goes now: the kernel gradients patches.T @ cotangent are ~0.56 of 2.02 s (timed by "
    "zeroing them). YNNPACK takes no dot whose left operand is column-major, so they run on Eigen at ~120 "
    "GFLOP/s; forced onto YNNPACK as cotangent.T @ patches behind optimisation barriers: 23 vs 19 ms per chunk",
    "compile of 5 inner steps: tracing and lowering 2.5-3 s, XLA 21-22 s (27,673 HLO lines against 16,369 at one "
    "step); xla_llvm_disable_expensive_passes 22.5 s, xla_cpu_parallel_codegen_split_count=2 21.5 s: no help",
    "rejected: max_pool2x2 with a custom VJP routing each window's cotangent to its first maximum (PyTorch's "
    "choice; JAX splits ties evenly, and blank Omniglot backgrounds tie everywhere): 1 step 1.87 -> 1.82 s, "
    "5 steps 3.66 -> 3.46 s, but the 5-step compile 20.9 -> 29.8 s and a change of the gradient at ties",
    "rejected: the inner loop without its peeled first step (all 5 steps in the scan): HLO 27,673 -> 19,662 lines, "
    "XLA compile 19.0 -> 15.4 s, but the step 3.24 -> 3.66 s (the shared initial weights no longer make the first "
    "step's matmuls single large ones)",
    "where the 5-step compile goes (XLA's own log): HLO passes 3.1 s, emitting 645 kernels 4.3 s, compiling them "
    "14.7 s on both cores. im2col's nested nine-way stack is the costly kernel: about 170 KB of optimised LLVM IR "
    "whatever its shape ((2, 45, 576) as (2, 14700, 576)); 37 of them were 4.8 of the program's 15.3 MB",
    "small convolutions (under 2048 output positions per task: every support-set convolution and the query's "
    "3x3 layer) as row patches (N, H+2, W, 3C) times all three kernel rows (3C, 3F) and a shifted sum: a "
    "three-way stack, compiled about 3x faster. Lowering and XLA compile 24.3 -> 14.9 s at 5 steps (XLA alone "
    "12.3 -> 9.7 s at 1); step time unchanged (5 steps 3.61 / 3.53 s, 1 step 2.03 / 2.00 s, medians of "
    "alternating runs); three separate "
    "K=3C matmuls instead of one: the same. Up to 4096 positions (adding the query's 7x7 layer): 0.6-1.4 s "
    "less compile, step within noise (3.32 / 3.40 s at 5 steps); kept at 2048",
    "rejected for compile time: im2col built in two stages (a three-way stack of columns, then one of rows): "
    "5-step compile 11.3 vs 18.5 s, but the step 4.22 vs 3.83 s (an extra pass over three times the input); row "
    "patches for every convolution of more than 3 channels: step 4.37 vs 3.71 s (the query's 14x14 layer is "
    "faster as one im2col pass); XLA's older loop emitters (xla_cpu_use_fusion_emitters=False): 5-step compile "
    "10-12 s but the step 8-27% slower (im2col stacks 2-3x slower there); xla_cpu_opt_preset=FAST_COMPILE: "
    "compile 22 s, step 5.2 s",
    "rejected, 2026-11-27 (compile: XLA alone, which moved from 12 to 18 s for the same 5-step program within the "
    "hour on this VM, so pairs compiled in one process; steps: medians of alternating runs): a hand-written VJP "
    "for batch norm's mean and variance (drops autodiff's zero-valued reduction): 5-step compile 15.4 / 15.8 s, step "
    "3.46 / 3.45 s; remat='step' (jax.checkpoint on each inner step): compile 12.5 / 12.5 s, step 3.32 -> 3.52 s; "
    "every input-gradient convolution as row patches: kernel IR 11.25 -> 11.01 MB, step 2.23 / 2.22 s at 1 step, "
    "3.79 -> 3.96 s at 5; the first block's patches in window-major order so that pooling reduces a leading axis: "
    "step 2.19 -> 3.19 s (YNNPACK's fused reduction over that axis took 0.7 s); max-pooling as the maximum of four "
    "strided corners with an even-split custom JVP: 2.16 -> 2.21 s, compile +1.4 s; YNNPACK for dots only "
    "(xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT, reductions back on XLA's emitters): "
    "2.13 -> 2.42 s; YNNPACK's elementwise fusions added to its dots and reductions: 1-step compile 9.8 / 9.6 s, "
    "step 2.28 -> 2.36 s; xla_cpu_prefer_vector_width=128: 5-step compile 12.8 -> 15.4 s; threefry's unrolled "
    "lowering on CPU: the sampler alone compiles in 1.8-2.1 s against 1.5-1.75 s rolled",
    "not adopted: the episode sampler drawing all its bits at once (one random.bits call, top_k for the classes "
    "and examples, argsort for the labels) compiles in 0.47 s against 1.3 s for today's, whose random-number "
    "kernels are 2.1 of the 5-step program's 11.25 MB of LLVM IR; but it changes every episode a seed draws, and "
    "with it the recorded Omniglot results",
    "tracing and lowering the 5-step program: 2.3-3.1 s (3.2-3.7 s the first time in a process); Python's garbage "
    "collector is about 0.5 s of it (gc disabled around lower(): 2.26-2.55 s against 2.84-3.08 s, alternating in "
    "one process); gc.freeze() after the imports: no change. Not adopted: switching the collector off is the "
    "caller's decision, and it would not bring the 5-step compile under 15 s in a slow phase",
    "chunks of 4 tasks instead of 2 (1 step): 2.49 against 2.38 s, compile 11.2 against 10.0 s",
    "adopted, 2026-11-27: every inner step in the scan (peel_first_step=False), re-measured after the changes above: "
    "5-step XLA compile 19.0 -> 15.4, 18.1 -> 14.6 and 16.3 -> 13.7 s in three pairs; kernel IR 592 kernels, "
    "11.25 MB -> 457, 8.79 MB; step medians 4.02 -> 4.13, 4.22 -> 4.25 and 4.06 -> 3.91 s (the VM in a slow "
    "phase): no measurable change, where it had cost 13% before. Sinusoid MAML at meta-batch 1024 still gains from "
    "the peeled step (2 steps: 65 against 84 ms; 5 steps: 155 against 165 ms), so it is an option of "
    "MetaLearnerConfig, on by default, off in this benchmark and the Omniglot experiments",
    "remat='rollout' (the inner loop's VJP keeps only the initial weights and recomputes each step's input): 5-step "
    "XLA compile 11.9 against 16.6 s, but the step 5.14 against 3.72 s (six extra support steps, and no peeled "
    "first step)",
    "learn2learn 0.2.0's own MAML (loaded from its source, see _learn2learn.py) in the same alternating rounds as "
    "the PyTorch loop and jmeta, 2026-11-27: 1 step 3.08 s against the loop's 3.22 s (jmeta 2.22 s), 5 steps 5.64 "
    "against 5.58 s (jmeta 3.84 s): its clone/adapt bookkeeping costs nothing measurable, so the loop stands in "
    "for it; learn2learn=PATH adds it as a row",
    "rejected, 2026-11-27 (1 step, chunks of 2, medians of alternating runs): four meta-steps per call "
    "(MetaStep.run, a scan over steps, as fit runs by default): 2.06 against 2.12 s and 2.20 against 2.19 s per "
    "step, although page faults fell from 57,000 to 14,400 per step (XLA allocates its temporary buffer per call), "
    "so the faults are not where the time goes; xla_cpu_multi_thread_eigen=False 2.29 s, "
    "xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT 2.28 s, "
    "xla_cpu_experimental_onednn_custom_call=True 2.36 s, all against 2.20 s; the first block's max-pool with a "
    "hand-written VJP splitting ties evenly in one pass (autodiff's values to the last bit in float64, first and "
    "second order): 2.03 and 1.94 s against 1.96 and 1.96 s; the support-set part of the step (inner gradient and "
    "its VJP) vmapped over all 32 tasks instead of chunks of 2: 418 against 293 ms alone; the 14x14 kernel "
    "gradient from patches transposed behind a barrier: 89 against 58 ms alone, from row patches 49 against 53 ms",
    "adopted, 2026-11-27: the embedding network keeps each im2col convolution's patches for its kernel gradient "
    "behind an optimisation barrier (conv4_learner(keep_patches=None): on for ways=0). With the weights shared by "
    "all tasks, XLA folded the tasks into the forward matmul's rows and built the backward's recomputed patches a "
    "second time in the per-task shape (two 14x14 im2col passes of 0.17 s each per step): protonet 2.29 -> 1.96 s "
    "and 2.16 -> 1.92 s (chunks of 2, alternating). For MAML (per-task weights, one shared pass already) the "
    "barrier gave no step change (2.06 / 2.04 s at 1 step) and 6% more kernel IR at 5 steps (483 kernels, "
    "8.94 MB -> 508, 9.46 MB), so MAML's learner recomputes them as before (the same 8.94 MB)",
    "rejected, 2026-11-27, second session (alternating medians; 'layer alone' is 16 chunks of 2 tasks of 75 "
    "images at 14x14x64): the convolution in blocks of 3 / 5 / 15 / 25 images (a lax.map in its forward and "
    "in its VJP, so each block's patches stay in cache): layer alone 1043 / 1153 / 1212 / 1254 against 1121 ms "
    "(forward and backward in one block, which a network cannot do, was 15% faster: the gain was the patches "
    "shared with the kernel gradient while hot); the first block's convolution as nine broadcast multiply-adds "
    "fused into the max-pool's reduction (only the pooled map written): forward 226 against 212 ms, forward and "
    "kernel gradient by autodiff 1141 against 397 ms; the kernel gradient as (cotangent.T @ patches).T: the dot "
    "alone 17-20 against 19-29 ms (Eigen either way), step 2.05 against 2.02 s; channels-first operands so "
    "that YNNPACK takes the kernel gradient (patches.T row-major): kernel gradient 15.9 ms, but the forward "
    "W.T @ patches.T 15.2 against 12.2 ms, no net change; xnn / oneDNN / ynn fusion-type options leave that dot "
    "on Eigen",
    "how far the 1-step target sits from PyTorch's own kernels, 2026-11-27 (one process, alternating, 150 s, two "
    "runs): the bare query pass in PyTorch (conv4 forward and backward over 32 x 75 query images with shared "
    "weights, oneDNN; no support set, no inner step) 2.334 / 1.834 s; jmeta's whole MAML step 1.887 / 1.931 s; "
    "learn2learn's MAML step 2.722 / 2.501 s (jmeta 1.44x / 1.30x), the PyTorch loop 2.844 / 2.597 s. 1.5x "
    "learn2learn would need 1.81 / 1.67 s: the whole second-order step 0.78-0.91x of the time oneDNN takes for "
    "the query's forward and backward pass alone",
    "tasks in chunks of 2 / 4 / 8 at 5 inner steps (alternating, 25 s each, 2026-11-27): MAML 3.29 / 3.42 / 4.31 s, "
    "FOMAML 2.23 / 2.45 / 2.64 s; chunks of 2 stay the advice at 5 steps as at 1. The profile there: the support "
    "set's row-patch matmuls ((1120, 192) @ (192, 192) per task, six kinds per inner step with second order) run at "
    "about 90 GFLOP/s, half the large-matmul rate, and are about 0.9 s of the 5-step time",
    "two cores against one, 2026-11-27 (1 step, chunks of 2, 20 s each): 1.97 s against 3.50 s under taskset "
    "(1.77x). Per op (profiles of both): the 14x14 layer's matmuls scale 1.8-2.1x, its im2col passes 1.2-1.4x, "
    "and the first block's pooling backward and kernel gradient (compare/convert, YNNPACK's even tie split, the "
    "select, the (58800, 9)^T @ (58800, 64) dot per pair of tasks; about 0.2 s per step) 0.9-1.26x: memory-bound "
    "on 480 MB full-resolution tensors (numpy copies at about 20 GB/s here). Two independent such dots in one "
    "program took twice one, and the meta-batch as two independent lax.maps of 16 tasks (for the executor to "
    "overlap) 1.763 / 1.784 s against 2.080 / 1.776 s: no gain from overlapping ops",
    "where the profile's idle time goes, 2026-11-27 (1 step, chunks of 2, 1.95 / 2.08 s steps): 430 / 447 ms with no "
    "op traced on either core, almost all of it right after the launch of the three kernel-gradient dots "
    "(patches.T @ cotangent at 28x28, 14x14 and 7x7). XLA:CPU runs those on Eigen asynchronously and Eigen's "
    "contraction is not traced, so the gaps are those dots (the 14x14 one alone 17-24 ms per chunk of 2 tasks); "
    "the traced ops sum to about 1.76 s",
    "rejected, 2026-11-27: that kernel gradient from patches built directly in the transposed layout (channels-first "
    "input, nine shifted planes: (9C, M) @ (M, F) goes to YNNPACK): the dot alone 17.8 -> 12.3 ms per chunk, but "
    "the step 1.85 -> 2.25 s, because with per-task weights the forward's patches already serve the kernel "
    "gradient and the transposed ones are an extra pass; numpy's OpenBLAS takes the same dot in 19.2 ms (14.8 "
    "transposed), so no faster library is at hand; lax.conv with xla_cpu_experimental_{xnn,ynn,onednn}_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION: the 14x14 layer's forward and backward for 16 tasks in a lax.map "
    "11.0-12.0 s as without the flags (im2col: 0.46-0.56 s), no library takes the convolutions in a loop",
]


@dataclasses.dataclass(frozen=True)
class Config:
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 32
    inner_steps: tuple[int, ...] = (1, 5)
    task_chunks: tuple[int, ...] = (0, 2)
    convs: tuple[str, ...] = ("im2col",)
    image_size: int = 28
    filters: int = 64
    strided: bool = False
    min_seconds: float = 6.0
    matmul_size: int = 2048
    torch_baseline: bool = True  # the PyTorch loop, and an installed learn2learn that imports
    learn2learn: str = ""  # a learn2learn source folder: its MAML as a row, whatever torch_baseline says
    peel_first_step: bool = False
    seed: int = 0


def _steps(steps: int) -> str:
    return f"{steps} step{'s' if steps > 1 else ''}"


def _label(conv: str, chunk: int) -> str:
    parts = (["lax.conv"] if conv == "xla" else []) + ([f"chunks of {chunk} tasks"] if chunk else [])
    return "".join(", " + part for part in parts)


def _matmul_peak(size: int) -> float:
    """Measured float32 matmul FLOP/s of this machine (the roofline the steps are compared with)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        jax.block_until_ready(matmul(a))
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start)


def _inner_loop_flops(build: Callable[[int], object], steps: int, sampler, config: Config) -> float:
    """XLA's FLOP count of a meta-step with ``steps`` inner steps; ``build(steps)`` gives the
    unchunked meta-learner with the first step peeled.

    XLA counts a loop's body once, not once per iteration, so the count of the program itself
    misses steps. The 1-step program has no loop and the 2-step one a loop of one iteration, so
    both are counted exactly, and each further step costs what the second did.
    """
    one = _flops(build(1), sampler, config)
    return one if steps == 1 else one + (steps - 1) * (_flops(build(2), sampler, config) - one)


def _flops(meta_learner, sampler, config: Config) -> float:
    """XLA's FLOP count of one meta-step, from the unchunked program (a ``lax.map`` over
    chunks is counted once, not once per chunk, so chunked programs under-report).

    The program is lowered for the CPU whatever the backend: XLA:GPU's cost analysis gives
    no FLOP count, and the count is the program's, not the device's.
    """
    meta_step = make_meta_step(meta_learner, sampler, config.meta_batch, default_optimizer())
    shapes = jax.eval_shape(lambda: (meta_step.init(meta_learner.init()), jax.random.key(config.seed)))
    # Arguments placed on the CPU make the CPU the lowering's backend (lowering_platforms alone
    # left the GPU's, whose cost analysis is unimplemented: the H200 JSON's FLOPs were nan).
    try:
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    except RuntimeError:  # JAX_PLATFORMS without "cpu"
        return float("nan")
    state, key = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), shapes)
    cost = meta_step.step.trace(state, key).lower().cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan")))


def _compiled_step(meta_learner, sampler, config: Config) -> tuple[Callable[[], None], float]:
    """One compiled meta-step as a call that runs a step and waits for it, and its compile seconds."""
    meta_step = make_meta_step(meta_learner, sampler, config.meta_batch, default_optimizer())
    state = [meta_step.init(meta_learner.init())]
    key = jax.random.key(config.seed)
    start = time.perf_counter()
    compiled = meta_step.step.lower(state[0], key).compile()
    compile_seconds = time.perf_counter() - start

    def call():
        state[0], metrics = compiled(state[0], key)  # the state is donated: keep the new one
        jax.block_until_ready(metrics)
    return call, compile_seconds


def _alternating(calls: dict[str, Callable[[], None]], min_seconds: float, min_calls: int = 3) -> dict[str, list[float]]:
    """Seconds of each call, timed in rounds after one warm-up each.

    A round runs, once each, the calls that still lack ``min_calls`` timings or
    ``min_seconds`` in all; a call that has both drops out. So a fast row's many rounds do not
    repeat a slow one: on an H200 the 5-step group (jmeta's 15 ms step against the PyTorch
    loop's 2 s) would otherwise have run the loop about 130 times, some ten minutes.
    """
    for call in calls.values():
        call()
    seconds = {name: [] for name in calls}

    def wanting(name: str) -> bool:
        return len(seconds[name]) < min_calls or sum(seconds[name]) < min_seconds
    while pending := [name for name in calls if wanting(name)]:
        for name in pending:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def _summary(seconds: list[float], config: Config) -> dict:
    median = statistics.median(seconds)
    return {"seconds_per_step": median, "meta_steps_per_second": 1 / median, "tasks_per_second": config.meta_batch / median,
            "seconds_min": min(seconds), "seconds_max": max(seconds), "timed_steps": len(seconds)}


def _torch_episode(torch, config: Config, device: str):
    """One random episode as PyTorch tensors: support images and labels, query images and labels."""
    size = config.image_size
    return (torch.randn(config.ways * config.shots, 1, size, size, device=device),
            torch.arange(config.ways, device=device).repeat_interleave(config.shots),
            torch.randn(config.ways * config.queries, 1, size, size, device=device),
            torch.arange(config.ways, device=device).repeat_interleave(config.queries))


def _torch_baseline(config: Config, build: Callable) -> tuple[Callable[[], None], dict] | None:
    """A PyTorch MAML baseline on conv4: a call that runs one meta-step (and waits for it) and
    a description, or None without PyTorch.

    ``build(torch, model)`` returns ``(query_loss, trainable)``: ``query_loss(support,
    support_y, query, query_y)`` adapts to one episode's support set and gives the query
    loss; ``trainable`` is the module whose parameters Adam updates. A meta-step draws a new
    episode per task and backpropagates each query loss over the meta-batch. It runs on CUDA
    when JAX runs on a GPU (and PyTorch sees one), else on the CPU.
    """
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
    torch.manual_seed(config.seed)
    layers = []
    channels = 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, config.filters, 3, padding=1), nn.BatchNorm2d(config.filters,
                   track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        channels = config.filters
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(config.filters, config.ways)).to(device)
    query_loss, trainable = build(torch, model)
    optimizer = torch.optim.Adam(trainable.parameters(), 1e-3)

    def call():
        optimizer.zero_grad()
        for _ in range(config.meta_batch):
            (query_loss(*_torch_episode(torch, config, device)) / config.meta_batch).backward()
        optimizer.step()
        synchronize()
    info = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": device,
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}
    return call, info


def _torch_maml(config: Config, inner_steps: int) -> tuple[Callable[[], None], dict] | None:
    """learn2learn-style conv4 MAML: a Python loop over tasks, autograd.grad(create_graph=True)."""
    def build(torch, model):
        from torch.func import functional_call

        cross_entropy = torch.nn.functional.cross_entropy
        names = [n for n, _ in model.named_parameters()]

        def query_loss(support, support_y, query, query_y):
            params = dict(model.named_parameters())
            for _ in range(inner_steps):
                loss = cross_entropy(functional_call(model, params, (support,)), support_y)
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                params = {n: p - 0.4 * g for n, p, g in zip(names, params.values(), grads)}
            return cross_entropy(functional_call(model, params, (query,)), query_y)
        return query_loss, model
    return _torch_baseline(config, build)


def _learn2learn_maml(config: Config, inner_steps: int, maml_class: type) -> tuple[Callable[[], None], dict] | None:
    """learn2learn's own MAML on the same workload: ``maml.clone()``, ``adapt`` per inner step.

    ``maml_class`` is ``learn2learn.algorithms.MAML`` (see ``_learn2learn.load_maml``).
    """
    def build(torch, model):
        cross_entropy = torch.nn.functional.cross_entropy
        maml = maml_class(model, lr=0.4, first_order=False)

        def query_loss(support, support_y, query, query_y):
            learner = maml.clone()
            for _ in range(inner_steps):
                learner.adapt(cross_entropy(learner(support), support_y))
            return cross_entropy(learner(query), query_y)
        return query_loss, maml
    made = _torch_baseline(config, build)
    if made is None:
        return None
    call, info = made
    return call, {**info, "learn2learn": sys.modules[maml_class.__module__].__file__}


def _check(config: Config) -> None:
    """Refuses a bad field by name before anything is measured or compiled."""
    check_fields(config, positive_ints=("shots", "queries", "meta_batch", "image_size", "filters", "matmul_size",
                                        "inner_steps"), non_negative_ints=("task_chunks",), at_least_two=("ways",))
    for conv in config.convs:
        check_choice("convs", conv, CONV_IMPLEMENTATIONS)
    if not (np.isfinite(config.min_seconds) and config.min_seconds >= 0):
        raise ValueError(f"min_seconds must be a finite number >= 0, got {config.min_seconds!r}")


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    _check(config)
    rng = np.random.default_rng(config.seed)
    data = rng.random((64, 20, config.image_size, config.image_size, 1)).astype(np.float32)
    sampler = make_episode_sampler(data, config.ways, config.shots, config.queries)
    shape = (config.image_size, config.image_size, 1)
    peak = _matmul_peak(config.matmul_size)
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "jax": jax.__version__, "backend": jax.default_backend(),
                           "device": jax.devices()[0].device_kind, "matmul_flops_per_second": peak},
               "config": dataclasses.asdict(config), "notes": NOTES, "jmeta": {}, "torch_loop": {}, "learn2learn": {}}
    key = jax.random.key(config.seed)
    # Loaded (and a bad source folder refused) before anything compiles.
    maml_class = load_maml(config.learn2learn) if config.torch_baseline or config.learn2learn else None

    def baselines(steps: int) -> dict[str, tuple]:
        """The PyTorch rows of ``steps`` inner steps, by results section: (timing key, call, info)."""
        found = {}
        if config.torch_baseline:
            found["torch_loop"] = ("PyTorch loop", _torch_maml(config, steps))
        if maml_class is not None:
            found["learn2learn"] = ("learn2learn", _learn2learn_maml(config, steps, maml_class))
        return {section: (name, *made) for section, (name, made) in found.items() if made is not None}

    def measure(group: dict[str, tuple], baseline_rows: dict[str, tuple] | None = None, baseline_name: str = "") -> str:
        """Times one group of rows in alternation and writes every row so far (returns their
        table); ``group`` maps a row to (call, compile s, FLOPs)."""
        baseline_rows = baseline_rows or {}
        calls = {name: call for name, (call, _, _) in group.items()}
        # Their own keys: "maml 1 step" also names a jmeta row.
        calls.update({name: call for name, call, _ in baseline_rows.values()})
        seconds = _alternating(calls, config.min_seconds)
        for name, (_, compile_seconds, flops) in group.items():
            r = _summary(seconds[name], config)
            results["jmeta"][name] = {**r, "compile_seconds": compile_seconds, "flops_per_step": flops,
                                      "fraction_of_matmul_peak": flops * r["meta_steps_per_second"] / peak}
        for section, (name, _, info) in baseline_rows.items():
            results[section][baseline_name] = {**_summary(seconds[name], config), **info}
        table = _write(results, run)
        if progress:
            print(f"timed {', '.join(calls)}; written to {run.file('bench_fewshot.json')}", flush=True)
        return table

    def compiled(name: str, meta_learner, flops: float) -> tuple:
        call, compile_seconds = _compiled_step(meta_learner, sampler, config)
        if progress:  # a slow compile shows in the log before the group is timed
            print(f"compiled {name} in {compile_seconds:.1f} s", flush=True)
        return call, compile_seconds, flops

    for steps in config.inner_steps:
        group = {}
        for conv in config.convs:
            learner = conv4_learner(key, shape, ways=config.ways, filters=config.filters, strided=config.strided,
                                    conv=conv)
            for algorithm in ("maml", "fomaml"):
                def build(chunk, inner_steps=steps, peel=config.peel_first_step):
                    return make_meta_learner(learner, algorithms.algorithm_config(
                        algorithm, loss="ce", num_inner_steps=inner_steps, inner_lr=0.4, task_chunk=chunk,
                        peel_first_step=peel))
                flops = _inner_loop_flops(lambda inner_steps: build(0, inner_steps, True), steps, sampler, config)
                for chunk in config.task_chunks:
                    name = f"{algorithm} {_steps(steps)}{_label(conv, chunk)}"
                    group[name] = compiled(name, build(chunk), flops)
        measure(group, baselines(steps), f"maml {_steps(steps)}")
    group = {}
    for conv in config.convs:
        embedding = conv4_learner(key, shape, ways=0, filters=config.filters, strided=config.strided, conv=conv)
        flops = _flops(make_protonet(embedding, config.ways), sampler, config)
        for chunk in config.task_chunks:
            protonet = make_protonet(embedding, config.ways, task_chunk=chunk)
            name = f"protonet{_label(conv, chunk)}"
            group[name] = compiled(name, protonet, flops)
    table = measure(group)
    print(f"\nConv4, {config.ways}-way {config.shots}-shot, {config.queries} queries, meta-batch {config.meta_batch}; "
          f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s\n\n{table}")
    return results


def _write(results: dict, run: RunDir) -> str:
    """Adds the ratios to the baselines and writes the JSON and the table of every row measured
    so far, atomically: a run stopped in a later group keeps them. Returns the table."""
    rows = []
    for name, r in results["jmeta"].items():
        ratios = []
        for section in ("torch_loop", "learn2learn"):
            baseline = results[section].get(name.split(",")[0])
            ratio = r["meta_steps_per_second"] / baseline["meta_steps_per_second"] if baseline else None
            r[f"over_{section}"] = ratio
            ratios.append("" if ratio is None else f"{ratio:.2f}x")
        rows.append([name, f"{r['seconds_per_step']:.3f}", f"{r['tasks_per_second']:.1f}", f"{r['compile_seconds']:.1f}",
                     f"{r['flops_per_step'] / 1e9:.1f}", f"{100 * r['fraction_of_matmul_peak']:.1f}%", *ratios])
    for section, label in (("torch_loop", "PyTorch loop"), ("learn2learn", "learn2learn")):
        for name, r in results[section].items():
            rows.append([f"{label}, {name}", f"{r['seconds_per_step']:.3f}", f"{r['tasks_per_second']:.1f}", "", "",
                         "", "", ""])
    table = markdown_table(["method", "s per meta-step", "tasks/s", "compile s", "GFLOP per step",
                            "of matmul peak", "over PyTorch loop", "over learn2learn"], rows)
    atomic_write_json(run.file("bench_fewshot.json"), results)
    atomic_write_text(run.file("bench_fewshot.md"), table)
    return table
