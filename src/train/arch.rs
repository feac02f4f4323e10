//! petal's own description of each supported backbone: torchvision's exact module structure and
//! parameter names, as data. The tch model (`model.rs`) is built by interpreting it, and so will
//! the ONNX exporter be: one description, no twin implementations to drift apart.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};

/// The backbones petal can fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    Vgg16,
    Vgg16Bn,
    MobilenetV2,
    EfficientnetB0,
}

impl Arch {
    pub const ALL: [Arch; 9] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Vgg16,
        Arch::Vgg16Bn,
        Arch::MobilenetV2,
        Arch::EfficientnetB0,
    ];

    /// torchvision's builder name (`resnet50`, `vgg16_bn`, …).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
            Arch::Vgg16 => "vgg16",
            Arch::Vgg16Bn => "vgg16_bn",
            Arch::MobilenetV2 => "mobilenet_v2",
            Arch::EfficientnetB0 => "efficientnet_b0",
        }
    }

    /// The network with a `num_classes`-way head.
    pub fn network(self, num_classes: i64) -> Network {
        match self {
            Arch::Resnet18 => resnet(self, Block::Basic, [2, 2, 2, 2], num_classes),
            Arch::Resnet34 => resnet(self, Block::Basic, [3, 4, 6, 3], num_classes),
            Arch::Resnet50 => resnet(self, Block::Bottleneck, [3, 4, 6, 3], num_classes),
            Arch::Resnet101 => resnet(self, Block::Bottleneck, [3, 4, 23, 3], num_classes),
            Arch::Resnet152 => resnet(self, Block::Bottleneck, [3, 8, 36, 3], num_classes),
            Arch::Vgg16 => vgg16(self, false, num_classes),
            Arch::Vgg16Bn => vgg16(self, true, num_classes),
            Arch::MobilenetV2 => mobilenet_v2(num_classes),
            Arch::EfficientnetB0 => efficientnet_b0(num_classes),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
            Error::new(ErrorCode::UnknownArchitecture, format!("unknown backbone {s:?}; known: {}", known.join(", ")))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    Relu6,
    Silu,
}

/// One layer of a network, named as in torchvision's `state_dict`.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv {
        name: String,
        cin: i64,
        cout: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        groups: i64,
        bias: bool,
    },
    BatchNorm {
        name: String,
        channels: i64,
        eps: f64,
        momentum: f64,
    },
    Act(Activation),
    MaxPool {
        kernel: i64,
        stride: i64,
        padding: i64,
    },
    /// Adaptive average pooling to `output`×`output`.
    AdaptiveAvgPool {
        output: i64,
    },
    Flatten,
    Dropout {
        p: f64,
    },
    Linear {
        name: String,
        cin: i64,
        cout: i64,
    },
    /// `body(x) (+ stochastic depth) + shortcut(x)`, then ReLU when `relu_after`.
    Residual {
        body: Vec<Op>,
        shortcut: Vec<Op>,
        relu_after: bool,
        drop_path: f64,
    },
    /// torchvision.ops.SqueezeExcitation: avgpool → fc1 (1×1 conv) → SiLU → fc2 → sigmoid → scale.
    SqueezeExcite {
        name: String,
        channels: i64,
        squeeze: i64,
    },
}

/// A whole classifier: `body` maps images to the head's input; `head` is the replaceable layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub arch: Arch,
    pub body: Vec<Op>,
    /// Name of the classification layer in torchvision (`fc`, `classifier.6`, `classifier.1`).
    pub head_name: String,
    pub feature_dim: i64,
    pub num_classes: i64,
}

/// Parameters and buffers of one layer: names and shapes, in the order of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    /// Buffers (batch-norm running statistics) are state but not trained.
    pub trainable: bool,
}

/// A named group of parameters for per-layer learning rates, ordered from input to output.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGroup {
    pub name: String,
    pub params: Vec<String>,
}

impl Network {
    /// The head as an op.
    pub fn head(&self) -> Op {
        Op::Linear { name: self.head_name.clone(), cin: self.feature_dim, cout: self.num_classes }
    }

    /// Every parameter and buffer, input to output, head last.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        for op in self.body.iter().chain(std::iter::once(&self.head())) {
            collect_params(op, &mut out);
        }
        out
    }

    /// Whether any convolution is grouped (depthwise in MobileNetV2 and EfficientNet-B0).
    pub fn has_grouped_convolutions(&self) -> bool {
        fn any(ops: &[Op]) -> bool {
            ops.iter().any(|op| match op {
                Op::Conv { groups, .. } => *groups > 1,
                Op::Residual { body, shortcut, .. } => any(body) || any(shortcut),
                _ => false,
            })
        }
        any(&self.body)
    }

    /// Names of the layers that are new when pretrained weights are loaded (the head).
    pub fn new_layers(&self) -> Vec<String> {
        vec![self.head_name.clone()]
    }

    /// The parameter groups that per-layer learning rates address, input to output: for ResNets
    /// the top-level modules (`conv1`, `bn1`, `layer1`…`layer4`, `fc`); for the others each
    /// `features.N` and the `classifier`.
    pub fn groups(&self) -> Vec<LayerGroup> {
        let mut groups: Vec<LayerGroup> = Vec::new();
        for p in self.params().into_iter().filter(|p| p.trainable) {
            let parts: Vec<&str> = p.name.split('.').collect();
            let group =
                if parts[0] == "features" { format!("{}.{}", parts[0], parts[1]) } else { parts[0].to_string() };
            match groups.last_mut() {
                Some(g) if g.name == group => g.params.push(p.name),
                _ => groups.push(LayerGroup { name: group, params: vec![p.name] }),
            }
        }
        groups
    }

    /// The same network with every dropout and stochastic-depth probability set to `p`
    /// (0 makes training-mode forwards deterministic, e.g. for parity checks).
    pub fn with_dropout(mut self, p: f64) -> Network {
        fn set(ops: &mut [Op], p: f64) {
            for op in ops {
                match op {
                    Op::Dropout { p: q } => *q = p,
                    Op::Residual { body, shortcut, drop_path, .. } => {
                        *drop_path = drop_path.min(p);
                        set(body, p);
                        set(shortcut, p);
                    }
                    _ => {}
                }
            }
        }
        set(&mut self.body, p);
        self
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> i64 {
        self.params().iter().filter(|p| p.trainable).map(|p| p.shape.iter().product::<i64>()).sum()
    }
}

fn collect_params(op: &Op, out: &mut Vec<ParamSpec>) {
    let mut push = |name: &str, leaf: &str, shape: Vec<i64>, trainable: bool| {
        out.push(ParamSpec { name: format!("{name}.{leaf}"), shape, trainable })
    };
    match op {
        Op::Conv { name, cin, cout, kernel, groups, bias, .. } => {
            push(name, "weight", vec![*cout, cin / groups, *kernel, *kernel], true);
            if *bias {
                push(name, "bias", vec![*cout], true);
            }
        }
        Op::BatchNorm { name, channels, .. } => {
            push(name, "weight", vec![*channels], true);
            push(name, "bias", vec![*channels], true);
            push(name, "running_mean", vec![*channels], false);
            push(name, "running_var", vec![*channels], false);
        }
        Op::Linear { name, cin, cout } => {
            push(name, "weight", vec![*cout, *cin], true);
            push(name, "bias", vec![*cout], true);
        }
        Op::SqueezeExcite { name, channels, squeeze } => {
            push(&format!("{name}.fc1"), "weight", vec![*squeeze, *channels, 1, 1], true);
            push(&format!("{name}.fc1"), "bias", vec![*squeeze], true);
            push(&format!("{name}.fc2"), "weight", vec![*channels, *squeeze, 1, 1], true);
            push(&format!("{name}.fc2"), "bias", vec![*channels], true);
        }
        Op::Residual { body, shortcut, .. } => {
            for op in body.iter().chain(shortcut) {
                collect_params(op, out);
            }
        }
        Op::Act(_) | Op::MaxPool { .. } | Op::AdaptiveAvgPool { .. } | Op::Flatten | Op::Dropout { .. } => {}
    }
}

// --- builders -------------------------------------------------------------------------------------

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// Mirrors `nn.Conv2d(in, out, kernel, stride, padding, groups=…, bias=…)`.
#[allow(clippy::too_many_arguments)]
fn conv(name: &str, cin: i64, cout: i64, kernel: i64, stride: i64, padding: i64, groups: i64, bias: bool) -> Op {
    Op::Conv { name: name.into(), cin, cout, kernel, stride, padding, groups, bias }
}

fn bn(name: &str, channels: i64) -> Op {
    Op::BatchNorm { name: name.into(), channels, eps: BN_EPS, momentum: BN_MOMENTUM }
}

/// torchvision's `Conv2dNormActivation`: conv (no bias, "same" padding) → BN → activation.
fn conv_norm_act(
    name: &str,
    cin: i64,
    cout: i64,
    kernel: i64,
    stride: i64,
    groups: i64,
    act: Option<Activation>,
) -> Vec<Op> {
    let mut ops = vec![
        conv(&format!("{name}.0"), cin, cout, kernel, stride, (kernel - 1) / 2, groups, false),
        bn(&format!("{name}.1"), cout),
    ];
    ops.extend(act.map(Op::Act));
    ops
}

#[derive(Clone, Copy)]
enum Block {
    Basic,
    Bottleneck,
}

fn resnet(arch: Arch, block: Block, layers: [i64; 4], num_classes: i64) -> Network {
    let expansion = match block {
        Block::Basic => 1,
        Block::Bottleneck => 4,
    };
    let mut body = vec![
        conv("conv1", 3, 64, 7, 2, 3, 1, false),
        bn("bn1", 64),
        Op::Act(Activation::Relu),
        Op::MaxPool { kernel: 3, stride: 2, padding: 1 },
    ];
    let mut inplanes = 64;
    for (stage, (&count, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{i}", stage + 1);
            let out = planes * expansion;
            let body_ops = match block {
                Block::Basic => vec![
                    conv(&format!("{p}.conv1"), inplanes, planes, 3, stride, 1, 1, false),
                    bn(&format!("{p}.bn1"), planes),
                    Op::Act(Activation::Relu),
                    conv(&format!("{p}.conv2"), planes, planes, 3, 1, 1, 1, false),
                    bn(&format!("{p}.bn2"), planes),
                ],
                Block::Bottleneck => vec![
                    conv(&format!("{p}.conv1"), inplanes, planes, 1, 1, 0, 1, false),
                    bn(&format!("{p}.bn1"), planes),
                    Op::Act(Activation::Relu),
                    conv(&format!("{p}.conv2"), planes, planes, 3, stride, 1, 1, false),
                    bn(&format!("{p}.bn2"), planes),
                    Op::Act(Activation::Relu),
                    conv(&format!("{p}.conv3"), planes, out, 1, 1, 0, 1, false),
                    bn(&format!("{p}.bn3"), out),
                ],
            };
            let shortcut = if stride != 1 || inplanes != out {
                vec![
                    conv(&format!("{p}.downsample.0"), inplanes, out, 1, stride, 0, 1, false),
                    bn(&format!("{p}.downsample.1"), out),
                ]
            } else {
                Vec::new()
            };
            body.push(Op::Residual { body: body_ops, shortcut, relu_after: true, drop_path: 0.0 });
            inplanes = out;
        }
    }
    body.extend([Op::AdaptiveAvgPool { output: 1 }, Op::Flatten]);
    Network { arch, body, head_name: "fc".into(), feature_dim: 512 * expansion, num_classes }
}

fn vgg16(arch: Arch, batch_norm: bool, num_classes: i64) -> Network {
    const CFG: [i64; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
    let mut body = Vec::new();
    let mut index = 0;
    let mut cin = 3;
    for &c in &CFG {
        if c == 0 {
            body.push(Op::MaxPool { kernel: 2, stride: 2, padding: 0 });
            index += 1;
            continue;
        }
        body.push(conv(&format!("features.{index}"), cin, c, 3, 1, 1, 1, true));
        index += 1;
        if batch_norm {
            body.push(bn(&format!("features.{index}"), c));
            index += 1;
        }
        body.push(Op::Act(Activation::Relu));
        index += 1;
        cin = c;
    }
    debug_assert_eq!(index, if batch_norm { 44 } else { 31 });
    body.extend([
        Op::AdaptiveAvgPool { output: 7 },
        Op::Flatten,
        Op::Linear { name: "classifier.0".into(), cin: 512 * 7 * 7, cout: 4096 },
        Op::Act(Activation::Relu),
        Op::Dropout { p: 0.5 },
        Op::Linear { name: "classifier.3".into(), cin: 4096, cout: 4096 },
        Op::Act(Activation::Relu),
        Op::Dropout { p: 0.5 },
    ]);
    Network { arch, body, head_name: "classifier.6".into(), feature_dim: 4096, num_classes }
}

fn mobilenet_v2(num_classes: i64) -> Network {
    // t (expansion), c (channels), n (repeats), s (stride of the first)
    const SETTINGS: [(i64, i64, i64, i64); 7] =
        [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
    let mut body = conv_norm_act("features.0", 3, 32, 3, 2, 1, Some(Activation::Relu6));
    let mut cin = 32;
    let mut index = 1;
    for (t, c, n, s) in SETTINGS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let p = format!("features.{index}.conv");
            let hidden = cin * t;
            let mut ops = Vec::new();
            let mut k = 0;
            if t != 1 {
                ops.extend(conv_norm_act(&format!("{p}.{k}"), cin, hidden, 1, 1, 1, Some(Activation::Relu6)));
                k += 1;
            }
            ops.extend(conv_norm_act(&format!("{p}.{k}"), hidden, hidden, 3, stride, hidden, Some(Activation::Relu6)));
            ops.push(conv(&format!("{p}.{}", k + 1), hidden, c, 1, 1, 0, 1, false));
            ops.push(bn(&format!("{p}.{}", k + 2), c));
            if stride == 1 && cin == c {
                body.push(Op::Residual { body: ops, shortcut: Vec::new(), relu_after: false, drop_path: 0.0 });
            } else {
                body.extend(ops);
            }
            cin = c;
            index += 1;
        }
    }
    body.extend(conv_norm_act(&format!("features.{index}"), cin, 1280, 1, 1, 1, Some(Activation::Relu6)));
    body.extend([Op::AdaptiveAvgPool { output: 1 }, Op::Flatten, Op::Dropout { p: 0.2 }]);
    Network { arch: Arch::MobilenetV2, body, head_name: "classifier.1".into(), feature_dim: 1280, num_classes }
}

fn efficientnet_b0(num_classes: i64) -> Network {
    // expand ratio, kernel, stride, input channels, output channels, layers
    const STAGES: [(i64, i64, i64, i64, i64, i64); 7] = [
        (1, 3, 1, 32, 16, 1),
        (6, 3, 2, 16, 24, 2),
        (6, 5, 2, 24, 40, 2),
        (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3),
        (6, 5, 2, 112, 192, 4),
        (6, 3, 1, 192, 320, 1),
    ];
    const STOCHASTIC_DEPTH: f64 = 0.2;
    let total_blocks: i64 = STAGES.iter().map(|s| s.5).sum();
    let mut body = conv_norm_act("features.0", 3, 32, 3, 2, 1, Some(Activation::Silu));
    let mut block_id = 0;
    for (stage, (expand, kernel, stride, cin, cout, layers)) in STAGES.into_iter().enumerate() {
        for i in 0..layers {
            let (cin, stride) = if i == 0 { (cin, stride) } else { (cout, 1) };
            let p = format!("features.{}.{i}.block", stage + 1);
            let expanded = cin * expand;
            let mut ops = Vec::new();
            let mut k = 0;
            if expanded != cin {
                ops.extend(conv_norm_act(&format!("{p}.{k}"), cin, expanded, 1, 1, 1, Some(Activation::Silu)));
                k += 1;
            }
            ops.extend(conv_norm_act(
                &format!("{p}.{k}"),
                expanded,
                expanded,
                kernel,
                stride,
                expanded,
                Some(Activation::Silu),
            ));
            ops.push(Op::SqueezeExcite {
                name: format!("{p}.{}", k + 1),
                channels: expanded,
                squeeze: (cin / 4).max(1),
            });
            ops.extend(conv_norm_act(&format!("{p}.{}", k + 2), expanded, cout, 1, 1, 1, None));
            let drop_path = STOCHASTIC_DEPTH * block_id as f64 / total_blocks as f64;
            if stride == 1 && cin == cout {
                body.push(Op::Residual { body: ops, shortcut: Vec::new(), relu_after: false, drop_path });
            } else {
                body.extend(ops);
            }
            block_id += 1;
        }
    }
    body.extend(conv_norm_act("features.8", 320, 1280, 1, 1, 1, Some(Activation::Silu)));
    body.extend([Op::AdaptiveAvgPool { output: 1 }, Op::Flatten, Op::Dropout { p: 0.2 }]);
    Network { arch: Arch::EfficientnetB0, body, head_name: "classifier.1".into(), feature_dim: 1280, num_classes }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torchvision's documented parameter counts (1000 classes).
    #[test]
    fn parameter_counts_match_torchvision() {
        let expected = [
            (Arch::Resnet18, 11_689_512),
            (Arch::Resnet34, 21_797_672),
            (Arch::Resnet50, 25_557_032),
            (Arch::Resnet101, 44_549_160),
            (Arch::Resnet152, 60_192_808),
            (Arch::Vgg16, 138_357_544),
            (Arch::Vgg16Bn, 138_365_992),
            (Arch::MobilenetV2, 3_504_872),
            (Arch::EfficientnetB0, 5_288_548),
        ];
        for (arch, n) in expected {
            assert_eq!(arch.network(1000).num_params(), n, "{arch}");
        }
    }

    #[test]
    fn names_and_groups() {
        assert_eq!("vgg16_bn".parse::<Arch>().unwrap(), Arch::Vgg16Bn);
        let e = "resnet9".parse::<Arch>().unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownArchitecture);
        let groups: Vec<String> = Arch::Resnet50.network(102).groups().into_iter().map(|g| g.name).collect();
        assert_eq!(groups, ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]);
        let vgg = Arch::Vgg16Bn.network(102);
        let groups: Vec<String> = vgg.groups().into_iter().map(|g| g.name).collect();
        // 13 convs and 13 batch norms carry parameters; the classifier is one group.
        assert_eq!(groups.len(), 27);
        assert_eq!(groups.first().unwrap(), "features.0");
        assert_eq!(groups.last().unwrap(), "classifier");
        assert_eq!(vgg.head_name, "classifier.6");
        let mb: Vec<String> = Arch::MobilenetV2.network(102).groups().into_iter().map(|g| g.name).collect();
        assert_eq!(mb.len(), 20);
        assert_eq!(mb[18], "features.18");
        let ef: Vec<String> = Arch::EfficientnetB0.network(102).groups().into_iter().map(|g| g.name).collect();
        assert_eq!(ef, (0..=8).map(|i| format!("features.{i}")).chain(["classifier".to_string()]).collect::<Vec<_>>());
    }
}
