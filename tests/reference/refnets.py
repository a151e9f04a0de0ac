"""Reference PyTorch networks for Atelier's golden tests and benchmark peers.

Written from the published architecture descriptions of
  * pytorch-CycleGAN-and-pix2pix ``models/networks.py`` (ResnetGenerator,
    UnetGenerator, NLayerDiscriminator, PixelDiscriminator, init_weights),
  * pytorch/examples ``dcgan`` (64x64 Generator / Discriminator),
  * the TensorFlow DCGAN tutorial (Keras), translated to PyTorch ("brief"),
  * Atelier's own LightGenerator.

The module structure (attribute names, ``nn.Sequential`` layouts and their
indices) is chosen so that ``state_dict()`` keys match the real checkpoints of
those projects, e.g. ``model.10.conv_block.1.weight`` for a ResnetGenerator.
Do not "clean up" the structure: the keys are the contract with the Rust side.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import init

__all__ = [
    "get_norm_layer",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetSkipConnectionBlock",
    "UnetGenerator",
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "BriefGenerator",
    "BriefDiscriminator",
    "LightGenerator",
    "init_weights",
    "perturb_for_golden",
    "build",
    "ARCHES",
]


# --------------------------------------------------------------------------
# pytorch-CycleGAN-and-pix2pix
# --------------------------------------------------------------------------

def get_norm_layer(norm_type="instance"):
    """'batch' -> BatchNorm2d(affine, running stats); 'instance' -> InstanceNorm2d
    (no affine, no running stats); 'none' -> Identity."""
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "none":
        return lambda _c: nn.Identity()
    raise NotImplementedError("normalization layer [%s] is not found" % norm_type)


def _use_bias(norm_layer):
    # Same rule as the reference: convs carry a bias only when followed by
    # InstanceNorm (BatchNorm has its own affine shift).
    if isinstance(norm_layer, functools.partial):
        return norm_layer.func == nn.InstanceNorm2d
    return norm_layer == nn.InstanceNorm2d


class ResnetBlock(nn.Module):
    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout, use_bias)

    @staticmethod
    def _pad(padding_type):
        if padding_type == "reflect":
            return [nn.ReflectionPad2d(1)], 0
        if padding_type == "replicate":
            return [nn.ReplicationPad2d(1)], 0
        if padding_type == "zero":
            return [], 1
        raise NotImplementedError("padding [%s] is not implemented" % padding_type)

    def build_conv_block(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        conv_block = []
        pad, p = self._pad(padding_type)
        conv_block += pad
        conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            conv_block += [nn.Dropout(0.5)]
        pad, p = self._pad(padding_type)
        conv_block += pad
        conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]
        return nn.Sequential(*conv_block)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False,
                 n_blocks=6, padding_type="reflect", upsampling="transposed"):
        # upsampling="resize" is Atelier's resnet_<n>blocks_resize: Upsample(x2, nearest),
        # ReflectionPad2d(1) and a 3x3 Conv2d in place of each ConvTranspose2d.
        assert n_blocks >= 0
        assert upsampling in ("transposed", "resize")
        super().__init__()
        use_bias = _use_bias(norm_layer)
        model = [nn.ReflectionPad2d(3),
                 nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                 norm_layer(ngf),
                 nn.ReLU(True)]
        n_downsampling = 2
        for i in range(n_downsampling):
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2),
                      nn.ReLU(True)]
        mult = 2 ** n_downsampling
        for i in range(n_blocks):
            model += [ResnetBlock(ngf * mult, padding_type=padding_type, norm_layer=norm_layer,
                                  use_dropout=use_dropout, use_bias=use_bias)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            if upsampling == "resize":
                model += [nn.Upsample(scale_factor=2, mode="nearest"),
                          nn.ReflectionPad2d(1),
                          nn.Conv2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, padding=0,
                                    bias=use_bias)]
            else:
                model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2,
                                             padding=1, output_padding=1, bias=use_bias)]
            model += [norm_layer(int(ngf * mult / 2)),
                      nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3)]
        model += [nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0)]
        model += [nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input):
        return self.model(input)


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = _use_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        # In-place on purpose: it rewrites this block's input, so the skip
        # connection below concatenates leaky_relu(x), not x (reference quirk).
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)

        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            down = [downconv]
            up = [uprelu, upconv, nn.Tanh()]
            model = down + [submodule] + up
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            down = [downrelu, downconv]
            up = [uprelu, upconv, upnorm]
            model = down + up
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            down = [downrelu, downconv, downnorm]
            up = [uprelu, upconv, upnorm]
            if use_dropout:
                model = down + [submodule] + up + [nn.Dropout(0.5)]
            else:
                model = down + [submodule] + up
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        unet_block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=None,
                                             norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            unet_block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=unet_block,
                                                 norm_layer=norm_layer, use_dropout=use_dropout)
        unet_block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, input_nc=None, submodule=unet_block, norm_layer=norm_layer)
        unet_block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, input_nc=None, submodule=unet_block, norm_layer=norm_layer)
        unet_block = UnetSkipConnectionBlock(ngf, ngf * 2, input_nc=None, submodule=unet_block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=unet_block,
                                             outermost=True, norm_layer=norm_layer)

    def forward(self, input):
        return self.model(input)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = _use_bias(norm_layer)
        kw = 4
        padw = 1
        sequence = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        nf_mult_prev = 1
        for n in range(1, n_layers):
            nf_mult_prev = nf_mult
            nf_mult = min(2 ** n, 8)
            sequence += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev = nf_mult
        nf_mult = min(2 ** n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
        ]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.model = nn.Sequential(*sequence)

    def forward(self, input):
        return self.model(input)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN discriminator."""

    def __init__(self, input_nc, ndf=64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = _use_bias(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=use_bias),
            norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=use_bias),
        )

    def forward(self, input):
        return self.net(input)


# --------------------------------------------------------------------------
# pytorch/examples dcgan (64x64)
# --------------------------------------------------------------------------

class DCGANGenerator(nn.Module):
    """Input N x nz x 1 x 1 -> N x nc x 64 x 64."""

    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, input):
        return self.main(input)


class DCGANDiscriminator(nn.Module):
    """Input N x nc x 64 x 64 -> N (sigmoid probabilities)."""

    def __init__(self, ndf=64, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


# --------------------------------------------------------------------------
# "brief" DCGAN: PyTorch translation of the Keras TF-tutorial DCGAN
# --------------------------------------------------------------------------

KERAS_LEAKY = 0.3  # keras.layers.LeakyReLU default alpha
KERAS_BN_EPS = 1e-3  # keras.layers.BatchNormalization default epsilon


class BriefGenerator(nn.Module):
    """N x nz -> N x channels x 28 x 28.

    ``width`` = w: dense ``fc`` nz -> 7*7*4w, ``bn0`` BatchNorm1d(7*7*4w), reshape
    to N x 4w x 7 x 7, then transposed convs 4w -> 2w (stride 1), 2w -> w
    (stride 2), w -> channels (stride 2). The default w=64 reproduces the
    tutorial's 256/128/64 exactly; the golden files use a smaller width to stay
    small (the dense layer alone is nz*49*4w parameters).
    """

    def __init__(self, nz=100, channels=3, width=64):
        super().__init__()
        self.width = width
        w = width
        self.fc = nn.Linear(nz, 7 * 7 * 4 * w, bias=False)
        self.bn0 = nn.BatchNorm1d(7 * 7 * 4 * w, eps=KERAS_BN_EPS)
        self.up1 = nn.ConvTranspose2d(4 * w, 2 * w, 5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * w, eps=KERAS_BN_EPS)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 5, stride=2, padding=2, output_padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w, eps=KERAS_BN_EPS)
        self.up3 = nn.ConvTranspose2d(w, channels, 5, stride=2, padding=2, output_padding=1, bias=False)

    def forward(self, z):
        x = F.leaky_relu(self.bn0(self.fc(z)), KERAS_LEAKY)
        x = x.view(x.shape[0], 4 * self.width, 7, 7)  # channel-first view of the dense output
        x = F.leaky_relu(self.bn1(self.up1(x)), KERAS_LEAKY)
        x = F.leaky_relu(self.bn2(self.up2(x)), KERAS_LEAKY)
        return torch.tanh(self.up3(x))


class BriefDiscriminator(nn.Module):
    """N x channels x size x size -> N x 1 logits (no sigmoid).

    ``width`` = w: ``conv1`` channels -> w, ``conv2`` w -> 2w (both 5x5, stride 2,
    "same"), ``fc`` 2w*(size/4)^2 -> 1. The default w=64 reproduces the
    tutorial's 64/128 exactly.
    """

    def __init__(self, channels=3, size=32, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 5, stride=2, padding=2)
        self.drop1 = nn.Dropout(0.3)
        self.conv2 = nn.Conv2d(width, width * 2, 5, stride=2, padding=2)
        self.drop2 = nn.Dropout(0.3)
        s = (size + 3) // 4  # two stride-2 "same" convs: ceil(ceil(size/2)/2)
        self.fc = nn.Linear(width * 2 * s * s, 1)

    def forward(self, x):
        x = self.drop1(F.leaky_relu(self.conv1(x), KERAS_LEAKY))
        x = self.drop2(F.leaky_relu(self.conv2(x), KERAS_LEAKY))
        return self.fc(torch.flatten(x, 1))  # C,H,W order


# --------------------------------------------------------------------------
# Atelier LightGenerator (real-time, depthwise-separable ResNet generator)
# --------------------------------------------------------------------------

def _inorm(x):
    return F.instance_norm(x, eps=1e-5)


class _LightBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw1 = nn.Conv2d(c, c, 3, groups=c)
        self.pw1 = nn.Conv2d(c, c, 1)
        self.dw2 = nn.Conv2d(c, c, 3, groups=c)
        self.pw2 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = F.relu(_inorm(self.pw1(self.dw1(F.pad(x, (1, 1, 1, 1), mode="reflect")))))
        y = _inorm(self.pw2(self.dw2(F.pad(y, (1, 1, 1, 1), mode="reflect"))))
        return x + y


class _LightUp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, groups=c)
        self.pw = nn.Conv2d(c, c // 2, 1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.pw(self.dw(F.pad(x, (1, 1, 1, 1), mode="reflect")))
        return F.relu(_inorm(x))


class LightGenerator(nn.Module):
    def __init__(self, input_nc=3, output_nc=3, ngf=32, n_blocks=6):
        super().__init__()
        self.stem = nn.Conv2d(input_nc, ngf, 7)
        self.down = nn.ModuleList([
            nn.Conv2d(ngf, ngf * 2, 3, stride=2, padding=1),
            nn.Conv2d(ngf * 2, ngf * 4, 3, stride=2, padding=1),
        ])
        self.blocks = nn.ModuleList([_LightBlock(ngf * 4) for _ in range(n_blocks)])
        self.up = nn.ModuleList([_LightUp(ngf * 4), _LightUp(ngf * 2)])
        self.head = nn.Conv2d(ngf, output_nc, 7)

    def forward(self, x):
        x = F.relu(_inorm(self.stem(F.pad(x, (3, 3, 3, 3), mode="reflect"))))
        for d in self.down:
            x = F.relu(_inorm(d(x)))
        for b in self.blocks:
            x = b(x)
        for u in self.up:
            x = u(x)
        return torch.tanh(self.head(F.pad(x, (3, 3, 3, 3), mode="reflect")))


# --------------------------------------------------------------------------
# init + factory
# --------------------------------------------------------------------------

def init_weights(net, init_type="normal", init_gain=0.02):
    """Like the reference init_weights(net, 'normal', 0.02). BatchNorm1d is
    included too (the reference only matches 'BatchNorm2d'; it has no 1d BN)."""

    def init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, "weight") and (classname.find("Conv") != -1 or classname.find("Linear") != -1):
            if init_type == "normal":
                init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                init.orthogonal_(m.weight.data, gain=init_gain)
            else:
                raise NotImplementedError("initialization method [%s] is not implemented" % init_type)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias.data, 0.0)
        elif classname.find("BatchNorm") != -1:
            init.normal_(m.weight.data, 1.0, init_gain)
            init.constant_(m.bias.data, 0.0)

    net.apply(init_func)
    return net


@torch.no_grad()
def perturb_for_golden(net, calib_input=None):
    """Make every stored tensor matter for the golden outputs.

    * every bias ~ N(0, 0.05)
    * BatchNorm running statistics: without ``calib_input``, running_mean ~
      N(0, 0.1) and running_var ~ U(0.5, 1.5). With ``calib_input`` they are
      first set to the batch statistics of that input (one train-mode forward,
      dropout off, cumulative average), as a trained checkpoint would have
      them, and then perturbed: mean += N(0, 0.1) * std, var *= U(0.5, 1.5).
      With the 0.02-gain init the plain recipe lets the activations shrink by
      ~10x per conv layer in eval mode, so deep nets output ~constants and the
      earlier weights stop influencing the output above test tolerance.
    """
    for m in net.modules():
        if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
            m.bias.normal_(0.0, 0.05)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return net
    if calib_input is None:
        for m in bns:
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        return net

    was_training = net.training
    saved = []
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            saved.append((m, "p", m.p))
            m.p = 0.0
    for m in bns:
        saved.append((m, "momentum", m.momentum))
        m.momentum = None  # cumulative average: after one batch == batch statistics
        m.reset_running_stats()
    net.train()
    net(calib_input.clone())
    for m, attr, v in saved:
        setattr(m, attr, v)
    for m in bns:
        std = m.running_var.sqrt()
        m.running_mean.add_(torch.randn_like(m.running_mean) * 0.1 * std)
        m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 1.5))
        m.num_batches_tracked.zero_()
    net.train(was_training)
    return net


ARCHES = [
    "resnet_6blocks", "resnet_9blocks", "resnet_6blocks_resize", "unet_128", "unet_256",
    "basic", "n_layers", "pixel",
    "dcgan64_G", "dcgan64_D", "brief_G", "brief_D", "light",
]


def build(arch, *, input_nc=3, output_nc=3, ngf=64, ndf=64, norm="instance", use_dropout=False,
          n_layers=3, n_blocks=None, nz=100, width=None, size=32):
    """Construct an (uninitialised) network from a manifest-style description."""
    if arch in ("resnet_6blocks", "resnet_9blocks", "resnet_6blocks_resize", "unet_128", "unet_256", "basic", "n_layers", "pixel"):
        norm_layer = get_norm_layer(norm)
    if arch == "resnet_6blocks":
        return ResnetGenerator(input_nc, output_nc, ngf, norm_layer=norm_layer, use_dropout=use_dropout,
                               n_blocks=6 if n_blocks is None else n_blocks)
    if arch == "resnet_6blocks_resize":
        return ResnetGenerator(input_nc, output_nc, ngf, norm_layer=norm_layer, use_dropout=use_dropout,
                               n_blocks=6 if n_blocks is None else n_blocks, upsampling="resize")
    if arch == "resnet_9blocks":
        return ResnetGenerator(input_nc, output_nc, ngf, norm_layer=norm_layer, use_dropout=use_dropout,
                               n_blocks=9 if n_blocks is None else n_blocks)
    if arch == "unet_128":
        return UnetGenerator(input_nc, output_nc, 7, ngf, norm_layer=norm_layer, use_dropout=use_dropout)
    if arch == "unet_256":
        return UnetGenerator(input_nc, output_nc, 8, ngf, norm_layer=norm_layer, use_dropout=use_dropout)
    if arch == "basic":
        return NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=norm_layer)
    if arch == "n_layers":
        return NLayerDiscriminator(input_nc, ndf, n_layers=n_layers, norm_layer=norm_layer)
    if arch == "pixel":
        return PixelDiscriminator(input_nc, ndf, norm_layer=norm_layer)
    if arch == "dcgan64_G":
        return DCGANGenerator(nz=nz, ngf=ngf, nc=output_nc)
    if arch == "dcgan64_D":
        return DCGANDiscriminator(ndf=ndf, nc=input_nc)
    if arch == "brief_G":
        return BriefGenerator(nz=nz, channels=output_nc, width=64 if width is None else width)
    if arch == "brief_D":
        return BriefDiscriminator(channels=input_nc, size=size, width=64 if width is None else width)
    if arch == "light":
        return LightGenerator(input_nc, output_nc, ngf=ngf, n_blocks=6 if n_blocks is None else n_blocks)
    raise ValueError("unknown arch %r" % arch)
