//! A backbone in libtorch: the variables of an `arch::Network`, created in a `VarStore` under
//! torchvision's names, and its forward pass, interpreted from the same description.
use std::collections::{BTreeMap, HashMap};

use tch::nn::{self, Init};
use tch::{Device, Tensor};

use crate::error::{Error, ErrorCode, Result};
use crate::train::arch::{Activation, Network, Op};

/// A network with its variables.
pub struct Model {
    pub network: Network,
    pub vs: nn::VarStore,
    body: Vec<Layer>,
    head: Layer,
}

/// An `Op` bound to its tensors.
enum Layer {
    Conv { w: Tensor, b: Option<Tensor>, stride: i64, padding: i64, groups: i64 },
    BatchNorm { w: Tensor, b: Tensor, mean: Tensor, var: Tensor, eps: f64, momentum: f64 },
    Act(Activation),
    MaxPool { kernel: i64, stride: i64, padding: i64 },
    AdaptiveAvgPool(i64),
    Flatten,
    Dropout(f64),
    Linear { w: Tensor, b: Tensor },
    Residual { body: Vec<Layer>, shortcut: Vec<Layer>, relu_after: bool, drop_path: f64 },
    SqueezeExcite { w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor },
}

/// `a.b.c` → the VarStore path `a / b / c` (tch refuses dots inside one segment).
fn path<'a>(root: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    dotted.split('.').fold(root.clone(), |p, s| p / s)
}

fn bind(root: &nn::Path, op: &Op) -> Layer {
    match op {
        Op::Conv { name, cin, cout, kernel, stride, padding, groups, bias } => {
            let p = path(root, name);
            // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), zero bias.
            let fan_out = (cout * kernel * kernel) as f64;
            let w = p.var(
                "weight",
                &[*cout, cin / groups, *kernel, *kernel],
                Init::Randn { mean: 0.0, stdev: (2.0 / fan_out).sqrt() },
            );
            let b = bias.then(|| p.var("bias", &[*cout], Init::Const(0.0)));
            Layer::Conv { w, b, stride: *stride, padding: *padding, groups: *groups }
        }
        Op::BatchNorm { name, channels, eps, momentum } => {
            let p = path(root, name);
            Layer::BatchNorm {
                w: p.var("weight", &[*channels], Init::Const(1.0)),
                b: p.var("bias", &[*channels], Init::Const(0.0)),
                mean: p.zeros_no_train("running_mean", &[*channels]),
                var: p.ones_no_train("running_var", &[*channels]),
                eps: *eps,
                momentum: *momentum,
            }
        }
        Op::Act(a) => Layer::Act(*a),
        Op::MaxPool { kernel, stride, padding } => {
            Layer::MaxPool { kernel: *kernel, stride: *stride, padding: *padding }
        }
        Op::AdaptiveAvgPool { output } => Layer::AdaptiveAvgPool(*output),
        Op::Flatten => Layer::Flatten,
        Op::Dropout { p } => Layer::Dropout(*p),
        Op::Linear { name, cin, cout } => {
            // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
            let p = path(root, name);
            let bound = 1.0 / (*cin as f64).sqrt();
            Layer::Linear {
                w: p.var("weight", &[*cout, *cin], Init::Uniform { lo: -bound, up: bound }),
                b: p.var("bias", &[*cout], Init::Uniform { lo: -bound, up: bound }),
            }
        }
        Op::Residual { body, shortcut, relu_after, drop_path } => Layer::Residual {
            body: body.iter().map(|op| bind(root, op)).collect(),
            shortcut: shortcut.iter().map(|op| bind(root, op)).collect(),
            relu_after: *relu_after,
            drop_path: *drop_path,
        },
        Op::SqueezeExcite { name, channels, squeeze } => {
            let p1 = path(root, &format!("{name}.fc1"));
            let p2 = path(root, &format!("{name}.fc2"));
            let b1 = 1.0 / (*channels as f64).sqrt();
            let b2 = 1.0 / (*squeeze as f64).sqrt();
            Layer::SqueezeExcite {
                w1: p1.var("weight", &[*squeeze, *channels, 1, 1], Init::Uniform { lo: -b1, up: b1 }),
                b1: p1.var("bias", &[*squeeze], Init::Uniform { lo: -b1, up: b1 }),
                w2: p2.var("weight", &[*channels, *squeeze, 1, 1], Init::Uniform { lo: -b2, up: b2 }),
                b2: p2.var("bias", &[*channels], Init::Uniform { lo: -b2, up: b2 }),
            }
        }
    }
}

impl Layer {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Layer::Conv { w, b, stride, padding, groups } => {
                x.conv2d(w, b.as_ref(), [*stride, *stride], [*padding, *padding], [1, 1], *groups)
            }
            Layer::BatchNorm { w, b, mean, var, eps, momentum } => {
                Tensor::batch_norm(x, Some(w), Some(b), Some(mean), Some(var), train, *momentum, *eps, true)
            }
            Layer::Act(Activation::Relu) => x.relu(),
            Layer::Act(Activation::Relu6) => x.relu6(),
            Layer::Act(Activation::Silu) => x.silu(),
            Layer::MaxPool { kernel, stride, padding } => {
                x.max_pool2d([*kernel, *kernel], [*stride, *stride], [*padding, *padding], [1, 1], false)
            }
            Layer::AdaptiveAvgPool(n) => x.adaptive_avg_pool2d([*n, *n]),
            Layer::Flatten => x.flatten(1, -1),
            Layer::Dropout(p) => {
                if train && *p > 0.0 {
                    x.dropout(*p, true)
                } else {
                    x.shallow_clone()
                }
            }
            Layer::Linear { w, b } => x.linear(w, Some(b)),
            Layer::Residual { body, shortcut, relu_after, drop_path } => {
                let mut y = run(body, x, train);
                if train && *drop_path > 0.0 {
                    // torchvision.ops.stochastic_depth, mode "row".
                    let survival = 1.0 - drop_path;
                    let mut size = vec![x.size()[0]];
                    size.extend(std::iter::repeat_n(1, x.dim() - 1));
                    let mut noise = Tensor::empty(size.as_slice(), (x.kind(), x.device()));
                    let _ = noise.bernoulli_float_(survival);
                    y *= noise / survival;
                }
                // In place, as torchvision's blocks do (`out += identity`, `relu(inplace=True)`):
                // `y` is the body's own fresh output, which no backward needs, and every tensor not
                // allocated is pages not faulted in.
                if shortcut.is_empty() {
                    y += x;
                } else {
                    y += run(shortcut, x, train);
                }
                if *relu_after {
                    let _ = y.relu_();
                }
                y
            }
            Layer::SqueezeExcite { w1, b1, w2, b2 } => {
                let s = x.adaptive_avg_pool2d([1, 1]);
                let s = s.conv2d(w1, Some(b1), [1, 1], [0, 0], [1, 1], 1).silu();
                let s = s.conv2d(w2, Some(b2), [1, 1], [0, 0], [1, 1], 1).sigmoid();
                x * s
            }
        }
    }
}

fn run(layers: &[Layer], x: &Tensor, train: bool) -> Tensor {
    let mut y = x.shallow_clone();
    let mut fresh = false;
    for layer in layers {
        y = match layer {
            // An activation right after a layer that wrote a new tensor runs in place on it (no
            // backward needs a convolution's, batch norm's or linear layer's output); never on
            // the block's input, which a residual connection reads again.
            // (SiLU's backward reads its input: it stays out of place.)
            Layer::Act(a @ (Activation::Relu | Activation::Relu6)) if fresh => {
                let _ = if *a == Activation::Relu { y.relu_() } else { y.relu6_() };
                y
            }
            _ => layer.forward(&y, train),
        };
        fresh = matches!(layer, Layer::Conv { .. } | Layer::BatchNorm { .. } | Layer::Linear { .. });
    }
    y
}

/// What loading a state dict did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Layers left at their fresh initialisation (a replaced head).
    pub new_layers: Vec<String>,
}

impl Model {
    /// Creates the variables on `device`, initialised as torchvision does.
    pub fn new(network: Network, device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let body = network.body.iter().map(|op| bind(&root, op)).collect();
        let head = bind(&root, &network.head());
        Model { network, vs, body, head }
    }

    /// Images `[N, 3, H, W]` → the head's input `[N, feature_dim]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        run(&self.body, x, train)
    }

    /// Features → logits.
    pub fn classify(&self, features: &Tensor, train: bool) -> Tensor {
        self.head.forward(features, train)
    }

    /// Images → logits.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.classify(&self.features(x, train), train)
    }

    /// Copies a state dict (torchvision names) into the variables. Every problem — missing keys,
    /// unexpected keys, shape mismatches — is listed in one error. With `replace_head`, the head's
    /// keys may be absent or of another shape: the head then keeps its fresh initialisation and is
    /// reported as new. `num_batches_tracked` is ignored.
    pub fn load_state_dict(&mut self, tensors: &[(String, Tensor)], replace_head: bool) -> Result<LoadReport> {
        let mut vars: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        let head_prefix = format!("{}.", self.network.head_name);
        let is_head = |k: &str| k.starts_with(&head_prefix);
        let mut given: HashMap<&str, &Tensor> = HashMap::new();
        let mut unexpected = Vec::new();
        let mut shapes = Vec::new();
        for (name, t) in tensors {
            if name.ends_with(".num_batches_tracked") {
                continue;
            }
            match vars.get(name) {
                None => unexpected.push(name.clone()),
                Some(v) if v.size() != t.size() => {
                    if !(replace_head && is_head(name)) {
                        shapes.push(format!("{name}: file {:?}, model {:?}", t.size(), v.size()));
                    }
                }
                Some(_) => {
                    given.insert(name.as_str(), t);
                }
            }
        }
        let missing: Vec<String> = vars
            .keys()
            .filter(|k| !(given.contains_key(k.as_str()) || replace_head && is_head(k)))
            .filter(|k| !shapes.iter().any(|s| s.starts_with(&format!("{k}:"))))
            .cloned()
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() || !shapes.is_empty() {
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!("missing keys ({}): {}", missing.len(), missing.join(", ")));
            }
            if !unexpected.is_empty() {
                parts.push(format!("unexpected keys ({}): {}", unexpected.len(), unexpected.join(", ")));
            }
            if !shapes.is_empty() {
                parts.push(format!("shape mismatches ({}): {}", shapes.len(), shapes.join("; ")));
            }
            return Err(Error::new(
                ErrorCode::WeightsMismatch,
                format!("weights do not fit {}: {}", self.network.arch, parts.join(" | ")),
            ));
        }
        let head_loaded = vars.keys().filter(|k| is_head(k)).all(|k| given.contains_key(k.as_str()));
        tch::no_grad(|| {
            for (name, t) in &given {
                let v = vars.get_mut(*name).expect("checked above");
                v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
            }
        });
        Ok(LoadReport {
            loaded: given.len(),
            new_layers: if head_loaded { Vec::new() } else { self.network.new_layers() },
        })
    }

    /// The trainable parameters (batch-norm statistics excluded), input to output, by name.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let vars = self.vs.variables();
        self.network
            .params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.name.clone(), vars[&p.name].shallow_clone()))
            .collect()
    }

    /// Every variable (parameters and buffers) by torchvision name.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::arch::Arch;
    use tch::Kind;

    #[test]
    fn variables_follow_the_description() {
        let network = Arch::Resnet18.network(10);
        let specs = network.params();
        let model = Model::new(network, Device::Cpu);
        let vars = model.vs.variables();
        assert_eq!(vars.len(), specs.len());
        for s in &specs {
            assert_eq!(vars[&s.name].size(), s.shape, "{}", s.name);
            assert_eq!(vars[&s.name].requires_grad(), s.trainable, "{}", s.name);
        }
        let y = model.forward(&Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)), false);
        assert_eq!(y.size(), vec![2, 10]);
    }

    #[test]
    fn load_lists_every_problem_and_replaces_heads() {
        let source = Model::new(Arch::Resnet18.network(1000), Device::Cpu);
        let mut sd = source.state_dict();
        let mut target = Model::new(Arch::Resnet18.network(7), Device::Cpu);
        // A 1000-class head into a 7-class model: fine when replacing the head.
        let report = target.load_state_dict(&sd, true).unwrap();
        assert_eq!(report.new_layers, vec!["fc".to_string()]);
        let err = target.load_state_dict(&sd, false).unwrap_err();
        assert!(err.message.contains("shape mismatches (2)"), "{}", err.message);
        assert!(err.message.contains("fc.weight: file [1000, 512], model [7, 512]"), "{}", err.message);

        sd.retain(|(k, _)| k != "layer1.0.conv1.weight");
        sd.push(("layer9.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
        sd.push(("bn1.num_batches_tracked".into(), Tensor::zeros([1], (Kind::Int64, Device::Cpu))));
        let err = target.load_state_dict(&sd, true).unwrap_err();
        assert_eq!(err.code, ErrorCode::WeightsMismatch);
        assert!(err.message.contains("missing keys (1): layer1.0.conv1.weight"), "{}", err.message);
        assert!(err.message.contains("unexpected keys (1): layer9.weight"), "{}", err.message);
    }
}
