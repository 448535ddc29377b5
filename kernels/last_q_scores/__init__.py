"""MInference's vertical-slash scores of the last queries (column and diagonal sums of their causal softmax), and
PBS-Attn's key importance (column means of their unmasked softmax over the first keys); see naive.py for the exact
semantics, triton.py for the fused GPU kernels."""
from .naive import last_q_importance_naive, last_q_scores_naive

__all__ = ["SCORES_KERNELS", "check_fused_device", "check_scores_kernel", "fused_scores", "last_q_importance_naive",
           "last_q_importance_triton", "last_q_scores_and_means_triton", "last_q_scores_naive",
           "last_q_scores_triton"]

# a method's `scores_kernel` knob: the fused kernels on CUDA (auto), the method's torch path, or the fused kernels
SCORES_KERNELS = ("auto", "torch", "triton")


def check_scores_kernel(method: str, choice: str) -> None:
    """A clear error naming the method when `choice` is not one of `SCORES_KERNELS`."""
    if choice not in SCORES_KERNELS:
        raise ValueError(f"{method} scores_kernel={choice!r} is not one of {', '.join(SCORES_KERNELS)}")


def check_fused_device(method: str, x) -> None:
    """A clear error naming the method when the fused kernels are asked for (`scores_kernel='triton'`) on a tensor
    they cannot run on: not on CUDA, and no TRITON_INTERPRET=1."""
    from .. import runs_triton

    if not runs_triton(x):
        raise ValueError(f"{method} scores_kernel='triton' needs a CUDA device (or TRITON_INTERPRET=1); q is on "
                         f"{x.device}: use scores_kernel='torch'")


def fused_scores(choice: str, x, head_dim: int | None = None, last_q: int | None = None) -> bool:
    """Whether `scores_kernel=choice` runs the fused kernels for a tensor `x`: `triton` always (a shape they do not
    take is then an error), `auto` on CUDA where they take the shape (`supports`: the given `head_dim`, and
    `last_q` for the vertical / slash kernel; the importance kernel takes any number of rows), else the method's
    torch path."""
    if choice == "triton":
        return True
    if choice != "auto" or not x.is_cuda:
        return False
    if head_dim is None:
        return True
    from .triton import supports

    return supports(head_dim, 1 if last_q is None else last_q) is None


def __getattr__(name):
    # importing the package must not import triton (CPU-only users, cheap CLI start-up): load the kernel on first use
    if name in ("last_q_scores_triton", "last_q_importance_triton", "last_q_scores_and_means_triton"):
        from . import triton

        return getattr(triton, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
