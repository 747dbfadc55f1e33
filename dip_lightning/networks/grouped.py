"""Several independent networks of one architecture as a single module (grouped convolutions).

Deep Image Prior fits one network per image. To fit ``K`` images of the same size (or ``K``
seeds of one image) at once, :func:`group_networks` merges ``K`` networks built with the same
arguments into one module whose input is the ``K`` inputs stacked along channels,
``(N, K * C_in, H, W)``, and whose output is ``(N, K * C_out, H, W)``: the ``k``-th block of
channels is what network ``k`` gives on input ``k`` (up to floating-point rounding).
:func:`split_output` cuts it back into ``K`` tensors.

The merge is done module by module:

* ``nn.Conv2d(C_in, C_out, groups=g)`` becomes ``nn.Conv2d(K * C_in, K * C_out, groups=K * g)``
  with the ``K`` weights and biases concatenated (``nn.ConvTranspose2d`` likewise);
* ``nn.BatchNorm2d(C)``, ``nn.InstanceNorm2d(C)``, ``nn.GroupNorm(G, C)``, ``nn.PReLU(C)`` and
  :class:`~dip_lightning.networks.spectral.MeanOnlyBatchNorm` become the same layer on ``K * C``
  channels (``K * G`` groups) with concatenated parameters and running statistics: their
  statistics are per channel (per group of channels), hence per network;
* the fixed depthwise :class:`~dip_lightning.networks.blocks.Downsampler` gets ``K * C`` planes;
* :class:`~dip_lightning.networks.blocks.Concat` along channels becomes :class:`GroupedConcat`,
  which concatenates the branches within each network's block of channels;
* :class:`~dip_lightning.networks.spectral.LipschitzConv2d` becomes
  :class:`GroupedLipschitzConv2d`, which bounds each network's convolution separately;
* modules that act on every channel separately (activations, sigmoid, up/downsampling, pooling,
  padding, :class:`~dip_lightning.networks.spectral.GaussianUpsample`) are kept as they are;
* the containers :class:`torch.nn.Sequential`, :class:`~dip_lightning.networks.SkipNet`,
  :class:`~dip_lightning.networks.ResNet` and
  :class:`~dip_lightning.networks.ResidualBlock` keep their structure.

Any other module type is refused with a ``ValueError`` naming it (its forward could mix the
networks' channels), and so is :class:`~dip_lightning.networks.UNet`, whose forward concatenates
feature maps along channels. Modules known to act on each channel separately can be declared with
``channelwise=``.

Every parameter of the merged module is the concatenation, along its first dimension, of the
``K`` networks' parameters, and the loss ``sum_k loss_k`` gives block ``k`` of each gradient the
gradient of ``loss_k``: an element-wise optimiser (SGD, Adam, AdamW, ...) then updates each
network as a separate fit would (not one that mixes elements, such as L-BFGS or clipping by the
global gradient norm). :meth:`GroupedNetwork.state_dict_of` gives network ``k``'s state back.
In float64 a grouped Adam fit follows the separate fits to about ``1e-12``; in float32 the two
drift apart within a few steps, as any change of summation order does (``channels_last``, for
one): Adam's first steps scale the rounding noise of gradients that are zero in exact arithmetic
(biases followed by batch normalisation) up to the learning rate.

>>> import torch
>>> from dip_lightning.networks import SkipNet
>>> nets = []
>>> for seed in range(3):
...     _ = torch.manual_seed(seed)
...     nets.append(SkipNet(4, 3, channels_down=8, channels_up=8, channels_skip=2, levels=2))
>>> grouped = group_networks(nets)
>>> x = [torch.rand(1, 4, 16, 16) for _ in nets]
>>> ys = split_output(grouped(torch.cat(x, 1)), 3)
>>> [y.shape[1] for y in ys], torch.allclose(ys[2], nets[2](x[2]), atol=1e-5)
([3, 3, 3], True)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .blocks import Concat, Downsampler
from .resnet import ResidualBlock, ResNet
from .skip import SkipNet
from .spectral import (
    GaussianUpsample,
    LipschitzConv2d,
    MeanOnlyBatchNorm,
)
from .unet import UNet

__all__ = [
    "CHANNELWISE_MODULES",
    "GroupedConcat",
    "GroupedLipschitzConv2d",
    "GroupedNetwork",
    "group_networks",
    "split_output",
]

#: Module types without parameters that act on every channel separately: kept as they are.
CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    GaussianUpsample,
)

#: Containers whose forward only chains their children, adds tensors of equal channels or
#: crops spatially: their children are grouped and the container is kept.
_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, ResidualBlock)
#: Networks of this package that are such containers.
_NETWORKS: tuple[type[nn.Module], ...] = (SkipNet, ResNet)


# --------------------------------------------------------------------------------------------
# grouped modules
# --------------------------------------------------------------------------------------------


def _center_crop(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Centre-crop the tensors to their smallest height and width, as :class:`Concat` does."""
    h = min(o.shape[2] for o in outputs)
    w = min(o.shape[3] for o in outputs)
    if all(o.shape[2] == h and o.shape[3] == w for o in outputs):
        return outputs
    cropped = []
    for o in outputs:
        top = (o.shape[2] - h) // 2
        left = (o.shape[3] - w) // 2
        cropped.append(o[:, :, top : top + h, left : left + w])
    return cropped


class GroupedConcat(Concat):
    """:class:`~dip_lightning.networks.blocks.Concat` along channels for ``groups`` networks.

    Each branch outputs ``groups`` blocks of channels (one per network); the result holds, for
    each network in turn, its blocks of every branch: ``(N, groups, C_b, H, W)`` concatenated
    on the ``C_b`` dimension. Branch outputs are centre-cropped to a common size first.

    >>> cat = GroupedConcat(2, 1, nn.Identity(), nn.Identity())
    >>> cat(torch.arange(2.0).view(1, 2, 1, 1)).flatten().tolist()
    [0.0, 0.0, 1.0, 1.0]
    """

    def __init__(self, groups: int, dim: int, *branches: nn.Module) -> None:
        if dim not in (1, -3):
            raise ValueError(f"GroupedConcat concatenates along channels (dim 1), got dim={dim}")
        super().__init__(1, *branches)
        self.groups = int(groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = _center_crop([branch(x) for branch in self.branches])
        n, _, h, w = outputs[0].shape
        blocks = []
        for o in outputs:
            if o.shape[1] % self.groups:
                raise ValueError(
                    f"a branch of GroupedConcat gave {o.shape[1]} channels, not a multiple of "
                    f"its {self.groups} groups"
                )
            blocks.append(o.reshape(n, self.groups, o.shape[1] // self.groups, h, w))
        return torch.cat(blocks, dim=2).reshape(n, -1, h, w)


class GroupedLipschitzConv2d(LipschitzConv2d):
    """``groups`` :class:`~dip_lightning.networks.spectral.LipschitzConv2d` layers in one.

    ``conv`` is the grouped convolution (its weight holds the ``groups`` weights one after
    another); each network's block of the weight is divided by ``max(1, sigma_k / bound)``,
    where ``sigma_k`` is the largest singular value of that network's convolution alone,
    tracked by power iteration on its own block of the vector ``u`` exactly as
    :class:`~dip_lightning.networks.spectral.LipschitzConv2d` does (the operator is block
    diagonal, so the iterations are normalised per block). :attr:`sigma` holds the ``groups``
    values.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        groups: int,
        bound: float,
        *,
        padding: str = "zero",
        pad: int = 0,
        n_power_iterations: int = 1,
        warmup_iterations: int = 30,
    ) -> None:
        if conv.out_channels % groups or conv.in_channels % groups:
            raise ValueError(
                f"the convolution's channels ({conv.in_channels}, {conv.out_channels}) are not "
                f"multiples of the {groups} groups"
            )
        super().__init__(
            conv,
            bound,
            padding=padding,
            pad=pad,
            n_power_iterations=n_power_iterations,
            warmup_iterations=warmup_iterations,
        )
        self.groups = int(groups)
        self.register_buffer("sigma", torch.full((groups,), float("nan")))

    def extra_repr(self) -> str:
        return f"groups={self.groups}, {super().extra_repr()}"


class GroupedNetwork(nn.Module):
    """``groups`` networks of one architecture merged by :func:`group_networks`.

    The input is the ``groups`` inputs stacked along channels, the output the ``groups``
    outputs likewise (:func:`split_output` separates them). :attr:`net` is the merged module,
    whose parameter and buffer names are those of the original networks.

    Attributes:
        groups: number of networks.
        in_channels, out_channels: channels of one network's input and output (``None`` when
            the networks do not declare them).
        multiple: the networks' ``multiple`` (1 if they do not declare one).
    """

    def __init__(
        self,
        net: nn.Module,
        groups: int,
        *,
        in_channels: int | None = None,
        out_channels: int | None = None,
        multiple: int = 1,
    ) -> None:
        super().__init__()
        self.net = net
        self.groups = int(groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.multiple = int(multiple)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels is not None and x.shape[1] != self.groups * self.in_channels:
            raise ValueError(
                f"expected the {self.groups} inputs of {self.in_channels} channels stacked along "
                f"dim 1 ({self.groups * self.in_channels} channels), got shape {tuple(x.shape)}"
            )
        return self.net(x)

    def state_dict_of(self, index: int) -> dict[str, torch.Tensor]:
        """The state dict of network ``index`` (copies), loadable into any of the originals."""
        if not 0 <= index < self.groups:
            raise IndexError(f"network index {index} out of range for {self.groups} networks")
        state: dict[str, torch.Tensor] = {}
        for key, tensor in self.net.state_dict().items():
            owner, _, name = key.rpartition(".")
            module = self.net.get_submodule(owner)
            if isinstance(module, GroupedLipschitzConv2d) and name == "sigma":
                part = tensor[index]
            elif isinstance(module, GroupedLipschitzConv2d) and name == "u" and tensor.numel():
                part = tensor.chunk(self.groups, dim=1)[index]
            elif tensor.dim() == 0 or tensor.numel() == 0:
                part = tensor
            else:
                part = tensor.chunk(self.groups, dim=0)[index]
            state[key] = part.clone()
        return state


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------


def _describe(path: str) -> str:
    return f"module {path!r}" if path else "the top-level module"


def _tensors(mods: Sequence[nn.Module], name: str) -> list[torch.Tensor | None]:
    """The parameter or buffer ``name`` of every module (``None`` where it is absent)."""
    values = [getattr(m, name, None) for m in mods]
    return [v if isinstance(v, torch.Tensor) else None for v in values]


def _cat(tensors: Sequence[torch.Tensor | None], dim: int = 0) -> torch.Tensor:
    """The tensors (detached) concatenated along ``dim``; all must be present."""
    values = [t.detach() for t in tensors if t is not None]
    if len(values) != len(tensors):
        raise ValueError("the networks differ in which parameters and buffers they have")
    return torch.cat(values, dim=dim)


def _copy_into(target: torch.Tensor | None, sources: Sequence[torch.Tensor | None]) -> None:
    """Fill ``target`` (a parameter or buffer of the merged layer) with the concatenation."""
    if target is None:
        return
    with torch.no_grad():
        target.copy_(_cat(sources))
    if isinstance(target, nn.Parameter) and isinstance(sources[0], nn.Parameter):
        target.requires_grad_(sources[0].requires_grad)


def _check_own_tensors(module: nn.Module, path: str, allowed: set[str]) -> None:
    names = {n for n, _ in module.named_parameters(recurse=False)}
    names |= {n for n, _ in module.named_buffers(recurse=False)}
    extra = names - allowed
    if extra:
        raise ValueError(
            f"cannot group {_describe(path)} ({type(module).__name__}): unexpected parameters or "
            f"buffers {sorted(extra)} (a reparametrisation such as weight or spectral norm?)"
        )


def _group_conv(mods: Sequence[nn.Module], path: str) -> nn.Module:
    first = mods[0]
    assert isinstance(first, nn.Conv2d | nn.ConvTranspose2d)
    _check_own_tensors(first, path, {"weight", "bias"})
    k = len(mods)
    kwargs: dict[str, Any] = {
        "kernel_size": first.kernel_size,
        "stride": first.stride,
        "padding": first.padding,
        "dilation": first.dilation,
        "groups": k * first.groups,
        "bias": first.bias is not None,
        "padding_mode": first.padding_mode,
        "device": first.weight.device,
        "dtype": first.weight.dtype,
    }
    new: nn.Conv2d | nn.ConvTranspose2d
    if isinstance(first, nn.ConvTranspose2d):
        kwargs["output_padding"] = first.output_padding
        new = nn.ConvTranspose2d(k * first.in_channels, k * first.out_channels, **kwargs)
    else:
        new = nn.Conv2d(k * first.in_channels, k * first.out_channels, **kwargs)
    # Conv2d weights are (out, in / g, kh, kw), ConvTranspose2d weights (in, out / g, kh, kw):
    # both are split into groups along dim 0, so the networks' weights stack along dim 0.
    _copy_into(new.weight, _tensors(mods, "weight"))
    _copy_into(new.bias, _tensors(mods, "bias"))
    return new


def _num_batches(mods: Sequence[nn.Module], path: str) -> torch.Tensor | None:
    counts = _tensors(mods, "num_batches_tracked")
    if counts[0] is None:
        return None
    values = {int(c) for c in counts if c is not None}
    if len(values) > 1:
        raise ValueError(
            f"cannot group {_describe(path)}: the networks' batch norms have seen different "
            f"numbers of batches ({sorted(values)})"
        )
    return counts[0]


def _group_norm(mods: Sequence[nn.Module], path: str) -> nn.Module:
    """BatchNorm2d / InstanceNorm2d on ``K * C`` channels with concatenated state."""
    first = mods[0]
    assert isinstance(first, nn.BatchNorm2d | nn.InstanceNorm2d)
    _check_own_tensors(
        first, path, {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    )
    ref = first.weight if first.weight is not None else first.running_mean
    new = type(first)(
        len(mods) * first.num_features,
        eps=first.eps,
        affine=first.affine,
        track_running_stats=first.track_running_stats,
        device=None if ref is None else ref.device,
        dtype=None if ref is None else ref.dtype,
    )
    new.momentum = first.momentum
    for name in ("weight", "bias", "running_mean", "running_var"):
        _copy_into(getattr(new, name), _tensors(mods, name))
    count = _num_batches(mods, path)
    if count is not None and new.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(count)
    return new


def _group_groupnorm(mods: Sequence[nn.Module], path: str) -> nn.Module:
    first = mods[0]
    assert isinstance(first, nn.GroupNorm)
    _check_own_tensors(first, path, {"weight", "bias"})
    k = len(mods)
    ref = first.weight
    new = nn.GroupNorm(
        k * first.num_groups,
        k * first.num_channels,
        eps=first.eps,
        affine=first.affine,
        device=None if ref is None else ref.device,
        dtype=None if ref is None else ref.dtype,
    )
    _copy_into(new.weight, _tensors(mods, "weight"))
    _copy_into(new.bias, _tensors(mods, "bias"))
    return new


def _group_prelu(mods: Sequence[nn.Module], path: str) -> nn.Module:
    first = mods[0]
    assert isinstance(first, nn.PReLU)
    _check_own_tensors(first, path, {"weight"})
    if first.num_parameters == 1 and len(mods) > 1:
        raise ValueError(
            f"cannot group {_describe(path)} (PReLU): its single slope is shared by all channels; "
            "use PReLU(num_channels) for one slope per channel"
        )
    new = nn.PReLU(
        len(mods) * first.num_parameters, device=first.weight.device, dtype=first.weight.dtype
    )
    _copy_into(new.weight, _tensors(mods, "weight"))
    return new


def _group_mean_only(mods: Sequence[nn.Module], path: str) -> nn.Module:
    first = mods[0]
    assert isinstance(first, MeanOnlyBatchNorm)
    _check_own_tensors(first, path, {"bias"})
    new = MeanOnlyBatchNorm(len(mods) * first.num_features).to(first.bias)
    _copy_into(new.bias, _tensors(mods, "bias"))
    return new


def _group_downsampler(mods: Sequence[nn.Module], path: str) -> nn.Module:
    first = mods[0]
    assert isinstance(first, Downsampler)
    _check_own_tensors(first, path, {"weight"})
    new = copy.deepcopy(first)
    new.n_planes = len(mods) * first.n_planes
    new.weight = _cat(_tensors(mods, "weight")).contiguous()
    return new


def _group_lipschitz(mods: Sequence[nn.Module], path: str) -> nn.Module:
    first = mods[0]
    assert isinstance(first, LipschitzConv2d)
    _check_own_tensors(first, path, {"u", "sigma"})
    conv = _group_conv([m.conv for m in mods if isinstance(m, LipschitzConv2d)], path + ".conv")
    assert isinstance(conv, nn.Conv2d)
    new = GroupedLipschitzConv2d(
        conv,
        len(mods),
        first.bound,
        padding=first.padding,
        pad=first.pad,
        n_power_iterations=first.n_power_iterations,
        warmup_iterations=first.warmup_iterations,
    ).to(device=first.sigma.device)
    with torch.no_grad():
        if first.u.numel():
            new.u = _cat(_tensors(mods, "u"), dim=1).clone()
        new.sigma = _cat([s.view(1) for s in _tensors(mods, "sigma") if s is not None]).clone()
    return new


_Converter = Callable[[Sequence[nn.Module], str], nn.Module]

#: Converters of the layers with parameters or per-channel buffers, by exact type.
_LAYERS: dict[type[nn.Module], _Converter] = {
    nn.Conv2d: _group_conv,
    nn.ConvTranspose2d: _group_conv,
    nn.BatchNorm2d: _group_norm,
    nn.InstanceNorm2d: _group_norm,
    nn.GroupNorm: _group_groupnorm,
    nn.PReLU: _group_prelu,
    MeanOnlyBatchNorm: _group_mean_only,
    Downsampler: _group_downsampler,
    LipschitzConv2d: _group_lipschitz,
}


def _signature(module: nn.Module) -> dict[str, str]:
    """What must agree between the networks at one module, by field."""
    fields = {"type": type(module).__qualname__, "settings": module.extra_repr()}
    for name, value in vars(module).items():
        if not name.startswith("_") and isinstance(
            value, bool | int | float | str | tuple | type(None)
        ):
            fields[f"attribute {name}"] = repr(value)
    fields["children"] = repr(list(module._modules))
    tensors = [
        *(("parameter", name, t) for name, t in module.named_parameters(recurse=False)),
        *(("buffer", name, t) for name, t in module.named_buffers(recurse=False)),
    ]
    for kind, name, t in tensors:
        fields[f"{kind} {name}"] = (
            f"shape {tuple(t.shape)} {t.dtype} on {t.device}, requires_grad={t.requires_grad}"
        )
    return fields


def _check_same_architecture(nets: Sequence[nn.Module]) -> None:
    """Raise a ``ValueError`` at the first module where a network differs from the first."""
    reference = list(nets[0].named_modules())
    for i, net in enumerate(nets[1:], start=1):
        other = list(net.named_modules())
        for (path, ref_module), (other_path, module) in zip(reference, other, strict=False):
            if path != other_path:
                raise ValueError(
                    f"networks 0 and {i} have different module trees: {path!r} vs {other_path!r}"
                )
            expected, got = _signature(ref_module), _signature(module)
            for field in [*expected, *(f for f in got if f not in expected)]:
                if expected.get(field) != got.get(field):
                    raise ValueError(
                        f"networks 0 and {i} differ at {_describe(path)} "
                        f"({type(ref_module).__name__}): {field} is "
                        f"{expected.get(field, 'absent')} vs {got.get(field, 'absent')}"
                    )
        if len(reference) != len(other):
            raise ValueError(
                f"networks 0 and {i} have different module trees ({len(reference)} vs "
                f"{len(other)} modules)"
            )


def _has_hooks(module: nn.Module) -> bool:
    return any(
        getattr(module, name, None)
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        )
    )


def _unknown(module: nn.Module, path: str) -> ValueError:
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        reason = "a module type with parameters or buffers that grouping does not support"
    elif any(True for _ in module.children()):
        reason = "an unknown container, whose forward may mix the networks' channels"
    else:
        reason = (
            "an unknown module, whose forward may mix the networks' channels; pass "
            "channelwise=(...) if it acts on each channel separately"
        )
    return ValueError(
        f"cannot group {_describe(path)} of type {type(module).__qualname__}: {reason}"
    )


def _group(
    mods: Sequence[nn.Module], path: str, channelwise: tuple[type[nn.Module], ...]
) -> nn.Module:
    """The merged module of the ``K`` corresponding modules ``mods`` (at ``path``)."""
    first = mods[0]
    kind = type(first)
    if kind is UNet:
        raise ValueError(
            f"cannot group {_describe(path)} (UNet): its forward concatenates feature maps "
            "along channels, which would mix the networks; use SkipNet or ResNet"
        )
    container = kind in _CONTAINERS or kind in _NETWORKS or kind is Concat
    if not (container or kind in _LAYERS or kind in channelwise):
        raise _unknown(first, path)
    if any(_has_hooks(m) for m in mods):
        raise ValueError(f"cannot group {_describe(path)} ({kind.__name__}): it has hooks")
    if kind in _LAYERS:
        return _LAYERS[kind](mods, path)
    if not container:  # declared channel-wise
        if any(True for _ in first.parameters()):
            raise ValueError(
                f"cannot group {_describe(path)} ({kind.__name__}): it has parameters; only "
                "parameter-free modules can be declared channel-wise"
            )
        return copy.deepcopy(first)

    _check_own_tensors(first, path, set())
    children = {
        name: _group(
            [m.get_submodule(name) for m in mods], f"{path}.{name}" if path else name, channelwise
        )
        for name in first._modules
    }
    # a copy of the container that shares the original children, which are then replaced
    memo = {id(child): child for child in first.children()}
    new = copy.deepcopy(first, memo)
    for name, child in children.items():
        new._modules[name] = child
    if isinstance(new, Concat) and new.dim in (1, -3):
        return GroupedConcat(len(mods), new.dim, *new.branches)
    return new


def group_networks(
    nets: Sequence[nn.Module], *, channelwise: Iterable[type[nn.Module]] = ()
) -> GroupedNetwork:
    """Merge ``K`` networks of identical architecture into one module (see the module doc).

    Args:
        nets: the networks, e.g. ``K`` :class:`~dip_lightning.networks.SkipNet` built with the
            same arguments under different seeds. They are not modified; the merged module
            holds copies of their parameters and buffers, and takes the first one's training
            mode.
        channelwise: extra parameter-free module types that act on each channel separately.

    Returns:
        A :class:`GroupedNetwork` mapping ``(N, K * C_in, H, W)`` to ``(N, K * C_out, H', W')``,
        block ``k`` of the output being network ``k``'s output on block ``k`` of the input.

    Raises:
        ValueError: no networks, networks whose module trees, shapes, settings, dtypes or
            devices differ, or a module that cannot be grouped (named in the message).
    """
    nets = list(nets)
    if not nets:
        raise ValueError("group_networks needs at least one network")
    _check_same_architecture(nets)
    known = (*CHANNELWISE_MODULES, *channelwise)
    merged = _group(nets, "", known)
    merged.train(nets[0].training)
    first = nets[0]
    in_channels = getattr(first, "in_channels", None)
    out_channels = getattr(first, "out_channels", None)
    return GroupedNetwork(
        merged,
        len(nets),
        in_channels=in_channels if isinstance(in_channels, int) else None,
        out_channels=out_channels if isinstance(out_channels, int) else None,
        multiple=int(getattr(first, "multiple", 1)),
    )


def split_output(y: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Split a grouped output ``(N, K * C, H, W)`` into the ``k`` networks' ``(N, C, H, W)``.

    >>> [t.shape[1] for t in split_output(torch.zeros(1, 6, 2, 2), 3)]
    [2, 2, 2]
    """
    if k < 1 or y.dim() < 2 or y.shape[1] % k:
        raise ValueError(f"cannot split {tuple(y.shape)} along dim 1 into {k} equal blocks")
    return list(y.chunk(k, dim=1))
