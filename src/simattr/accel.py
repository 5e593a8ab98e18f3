"""Where network work runs, and a loud stop when a job given a GPU cannot use it.

A job is *given a GPU* when the workflow asked for one (`simattr --gpus N`, from the rule's `gpu` resource; a
support task's `launch.gpus_per_node`) or when its environment names a device (`CUDA_VISIBLE_DEVICES` set by
SLURM, by submitit's local executor or by hand). Such a job that finds no usable CUDA device (a CPU-only torch
build, a missing driver, a device another job holds exclusively) stops with one line naming the job,
`CUDA_VISIBLE_DEVICES`, torch's build and what to install, instead of running 50-100x slower on the CPU and
succeeding. `SIMATTR_ALLOW_CPU=1` lets it run on the CPU anyway (a test cluster with fake GPUs).

`SIMATTR_DEVICE` chooses the device outright: `cpu` (the test suite's default: its exact-bit checks hold for the
CPU), `cuda` (an error without a usable device), `auto` (the default: CUDA when torch sees a device).

`keep_freed_memory` asks glibc's malloc to keep freed memory for reuse (the ESVM solver's chunk-sized arrays).

Importing this module does not import torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys

from .errors import SimattrError

ALLOW_CPU = "SIMATTR_ALLOW_CPU"
DEVICE = "SIMATTR_DEVICE"
NO_DEVICE = ("", "-1", "none", "nodevfiles", "void")

_job = {"name": "simattr", "gpus": 0}


def claim(job: str, gpus: int, check: bool = True) -> None:
    """This process is `job`, given `gpus` GPUs by the workflow (0: none asked). With gpus > 0 and `check` the
    CUDA check runs now, before any data is read; otherwise when network work first asks for its device."""
    _job.update(name=str(job), gpus=int(gpus))
    if gpus > 0 and check:
        default_device()


@contextlib.contextmanager
def claimed(job: str, gpus: int):
    """claim(job, gpus, check=False) for a block (a task run inside this process); the claim before it is
    restored after."""
    old = dict(_job)
    claim(job, gpus, check=False)
    try:
        yield
    finally:
        _job.update(old)


def visible_devices() -> str | None:
    """CUDA_VISIBLE_DEVICES as set (None when unset)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def gpus_given() -> bool:
    """Whether this job was given a GPU: asked for by the workflow, or named by CUDA_VISIBLE_DEVICES."""
    env = visible_devices()
    return _job["gpus"] > 0 or (env is not None and env.strip().lower() not in NO_DEVICE)


def torch_build(torch) -> str:
    """torch's version and build: 'torch 2.4.1+cu121 (CUDA 12.1 build)' or '... (CPU-only build)'."""
    cuda = getattr(torch.version, "cuda", None)
    return f"torch {torch.__version__} ({f'CUDA {cuda} build' if cuda else 'CPU-only build'})"


def no_cuda_message(torch) -> str:
    """The one line a job given a GPU without usable CUDA stops with."""
    env = visible_devices()
    cuda = getattr(torch.version, "cuda", None)
    why = ("a CPU-only torch: install a CUDA build of pytorch for your driver (conda-forge: "
           "`pytorch[build='cuda*']` with `cuda-version` at most your driver's CUDA, as envs/simattr.yaml asks; "
           "pip: `pip install torch --index-url https://download.pytorch.org/whl/cu126`)" if not cuda else
           "a CUDA build, but no device it can use: check the driver (`nvidia-smi`) supports CUDA "
           f"{cuda}, or install the pytorch build for your driver's CUDA version")
    return (f"job '{_job['name']}' was given a GPU (workflow gpus={_job['gpus']}, CUDA_VISIBLE_DEVICES="
            f"{'unset' if env is None else repr(env)}) but {torch_build(torch)} finds no usable CUDA device: "
            f"{why}; or set {ALLOW_CPU}=1 to run it on the CPU")


def default_device():
    """Where simattr's networks run unless told otherwise: SIMATTR_DEVICE when set to cpu or cuda; else CUDA when
    torch sees a device, else the CPU, unless this job was given a GPU: then a missing CUDA device is an error
    (SimattrError, one line)."""
    import torch

    want = os.environ.get(DEVICE, "auto").strip().lower() or "auto"
    if want not in ("auto", "cpu", "cuda"):
        raise SimattrError(f"{DEVICE}={want!r}: expected auto, cpu or cuda")
    if want == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if want == "cuda":
        raise SimattrError(f"{DEVICE}=cuda but " + no_cuda_message(torch).split(" but ", 1)[1])
    if gpus_given() and os.environ.get(ALLOW_CPU, "") not in ("1", "true", "yes"):
        raise SimattrError(no_cuda_message(torch))
    return torch.device("cpu")


def cuda_in_use() -> bool:
    """Whether this process has torch loaded and a CUDA device to run on (without importing torch)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def configure(deterministic: bool, device) -> None:
    """cuDNN / cuBLAS settings for training on `device`. deterministic: deterministic algorithms only (the same
    seed gives the same bits on one GPU type; slower). Otherwise cuDNN autotunes (benchmark mode): the fastest
    algorithm for each shape, whose choice, and so the last bits of a model, can vary between runs."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    # warn_only: an op without a deterministic CUDA kernel warns (in the job's log) instead of killing a long run;
    # simattr's networks avoid the ones they would meet (models.GlobalPool), and gpu-check checks the bits
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def release(device) -> None:
    """Give cached GPU memory back after a model is dropped (other processes sharing the GPU can use it)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.empty_cache()


def device(want=None):
    """The one place a device is chosen: `want` (a torch.device or a name: cpu, cuda, cuda:1) when given, else
    (None, "auto") default_device(). Asking for CUDA where torch has none is one line (SimattrError)."""
    import torch

    if want is None or (isinstance(want, str) and want.strip().lower() in ("", "auto")):
        return default_device()
    dev = torch.device(want)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SimattrError(f"device {str(want)!r} was asked for, but " + no_cuda_message(torch).split(" but ", 1)[1])
    return dev


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS (once per process).

    The solver allocates and frees many chunk-sized arrays (a few MiB each) per Newton step; by default glibc
    serves those with fresh mmap'd pages or trims its heap after each free, so every step pays page faults and
    zeroing again (measured here: 10-25% of the solver's CPU time, as system time). This is what PyTorch's CPU
    tuning guide gets by preloading jemalloc or tcmalloc. The cost: a process's resident memory does not shrink
    back after a large temporary is freed. A no-op (False) off glibc; True when set."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = (mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1) & (mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1) == 1) \
        & (mallopt(M_TOP_PAD, 64 << 20) == 1)
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED
