//! Builds an ONNX model from petal's own description of a network (`train::arch`) and the
//! model's weights — the same description the libtorch model is built from, so the two cannot
//! drift apart. Opset 17, weights as initializers, a dynamic batch axis, and metadata
//! properties (class names, eval transform, petal version, provenance digest).
use std::collections::BTreeMap;

use prost::Message;
use tch::{Kind, Tensor};

use crate::error::{Error, ErrorCode, Result};
use crate::records::model_io::{meta, INPUT_NAME, OUTPUT_NAME};
use crate::train::arch::{Activation, Op};
use crate::train::model::Model;

/// The generated protobuf types of `proto/onnx.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17.
pub const IR_VERSION: i64 = 8;

/// What goes into the model's metadata besides the graph.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Square input size the graph is built for (pooling is resolved for it).
    pub image_size: i64,
    pub class_names: Vec<String>,
    /// The eval transform as JSON (resize, crop, mean, std, interpolation).
    pub transform: serde_json::Value,
    pub provenance_digest: Option<String>,
    pub model_name: Option<String>,
    /// Store weights as float16 (half the file), cast to float32 inside the graph: compute stays
    /// fp32, only the weights are rounded.
    pub fp16_weights: bool,
}

struct Builder<'a> {
    vars: &'a BTreeMap<String, Tensor>,
    fp16: bool,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    counter: usize,
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn float_tensor(name: &str, t: &Tensor) -> Result<pb::TensorProto> {
    let t = t.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut data = vec![0f32; numel];
    t.f_copy_data(&mut data, numel).map_err(|e| Error::internal(format!("reading {name}: {e}")))?;
    let raw: Vec<u8> = data.iter().flat_map(|f| f.to_le_bytes()).collect();
    Ok(pb::TensorProto {
        name: Some(name.into()),
        dims: t.size(),
        data_type: Some(pb::tensor_proto::DataType::Float as i32),
        raw_data: Some(raw),
        ..Default::default()
    })
}

impl Builder<'_> {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attrs: Vec<pb::AttributeProto>, hint: &str) -> String {
        let out = self.fresh(hint);
        self.nodes.push(pb::NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("{op}_{}", self.counter)),
            input: inputs,
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Adds a variable of the model as an initializer named as in torchvision.
    fn weight(&mut self, name: &str) -> Result<String> {
        let t = self.vars.get(name).ok_or_else(|| Error::internal(format!("the model has no variable {name}")))?;
        if self.fp16 {
            let stored = format!("{name}.fp16");
            self.initializers.push(half_tensor(&stored, t));
            self.nodes.push(pb::NodeProto {
                op_type: Some("Cast".into()),
                name: Some(format!("Cast_{name}")),
                input: vec![stored],
                output: vec![name.to_string()],
                attribute: vec![attr_int("to", pb::tensor_proto::DataType::Float as i64)],
                ..Default::default()
            });
        } else {
            self.initializers.push(float_tensor(name, t)?);
        }
        Ok(name.to_string())
    }

    fn activation(&mut self, x: String, a: Activation) -> String {
        match a {
            Activation::Relu => self.node("Relu", vec![x], vec![], "relu"),
            Activation::Relu6 => {
                if !self.initializers.iter().any(|t| t.name.as_deref() == Some("petal.zero")) {
                    self.initializers.push(scalar("petal.zero", 0.0));
                    self.initializers.push(scalar("petal.six", 6.0));
                }
                self.node("Clip", vec![x, "petal.zero".into(), "petal.six".into()], vec![], "relu6")
            }
            Activation::Silu => {
                let s = self.node("Sigmoid", vec![x.clone()], vec![], "sigmoid");
                self.node("Mul", vec![x, s], vec![], "silu")
            }
        }
    }

    /// Emits `ops` on `x` whose spatial size is `size`; returns the output and its size.
    fn ops(&mut self, ops: &[Op], mut x: String, mut size: i64) -> Result<(String, i64)> {
        for op in ops {
            (x, size) = self.op(op, x, size)?;
        }
        Ok((x, size))
    }

    fn op(&mut self, op: &Op, x: String, size: i64) -> Result<(String, i64)> {
        Ok(match op {
            Op::Conv { name, kernel, stride, padding, groups, bias, .. } => {
                let mut inputs = vec![x, self.weight(&format!("{name}.weight"))?];
                if *bias {
                    inputs.push(self.weight(&format!("{name}.bias"))?);
                }
                let attrs = vec![
                    attr_ints("kernel_shape", &[*kernel, *kernel]),
                    attr_ints("strides", &[*stride, *stride]),
                    attr_ints("pads", &[*padding, *padding, *padding, *padding]),
                    attr_ints("dilations", &[1, 1]),
                    attr_int("group", *groups),
                ];
                (self.node("Conv", inputs, attrs, "conv"), (size + 2 * padding - kernel) / stride + 1)
            }
            Op::BatchNorm { name, eps, .. } => {
                let inputs = vec![
                    x,
                    self.weight(&format!("{name}.weight"))?,
                    self.weight(&format!("{name}.bias"))?,
                    self.weight(&format!("{name}.running_mean"))?,
                    self.weight(&format!("{name}.running_var"))?,
                ];
                (self.node("BatchNormalization", inputs, vec![attr_float("epsilon", *eps as f32)], "bn"), size)
            }
            Op::Act(a) => (self.activation(x, *a), size),
            Op::MaxPool { kernel, stride, padding } => {
                let attrs = vec![
                    attr_ints("kernel_shape", &[*kernel, *kernel]),
                    attr_ints("strides", &[*stride, *stride]),
                    attr_ints("pads", &[*padding, *padding, *padding, *padding]),
                ];
                (self.node("MaxPool", vec![x], attrs, "maxpool"), (size + 2 * padding - kernel) / stride + 1)
            }
            Op::AdaptiveAvgPool { output } => {
                if *output == 1 {
                    (self.node("GlobalAveragePool", vec![x], vec![], "gap"), 1)
                } else if size == *output {
                    (x, size)
                } else if size % output == 0 {
                    let k = size / output;
                    let attrs = vec![attr_ints("kernel_shape", &[k, k]), attr_ints("strides", &[k, k])];
                    (self.node("AveragePool", vec![x], attrs, "avgpool"), *output)
                } else {
                    return Err(Error::new(
                        ErrorCode::ExportFailed,
                        format!("adaptive pooling from {size}×{size} to {output}×{output} has no exact ONNX form; export at another image size"),
                    ));
                }
            }
            Op::Flatten => (self.node("Flatten", vec![x], vec![attr_int("axis", 1)], "flatten"), 1),
            Op::Dropout { .. } => (x, size),
            Op::Linear { name, .. } => {
                let inputs = vec![x, self.weight(&format!("{name}.weight"))?, self.weight(&format!("{name}.bias"))?];
                (self.node("Gemm", inputs, vec![attr_int("transB", 1)], "gemm"), 1)
            }
            Op::Residual { body, shortcut, relu_after, .. } => {
                let (y, out_size) = self.ops(body, x.clone(), size)?;
                let (s, _) = self.ops(shortcut, x, size)?;
                let sum = self.node("Add", vec![y, s], vec![], "add");
                let out = if *relu_after { self.node("Relu", vec![sum], vec![], "relu") } else { sum };
                (out, out_size)
            }
            Op::SqueezeExcite { name, .. } => {
                let pooled = self.node("GlobalAveragePool", vec![x.clone()], vec![], "se_pool");
                let w1 = self.weight(&format!("{name}.fc1.weight"))?;
                let b1 = self.weight(&format!("{name}.fc1.bias"))?;
                let conv_attrs = || vec![attr_ints("kernel_shape", &[1, 1])];
                let s = self.node("Conv", vec![pooled, w1, b1], conv_attrs(), "se_fc1");
                let s = self.activation(s, Activation::Silu);
                let w2 = self.weight(&format!("{name}.fc2.weight"))?;
                let b2 = self.weight(&format!("{name}.fc2.bias"))?;
                let s = self.node("Conv", vec![s, w2, b2], conv_attrs(), "se_fc2");
                let s = self.node("Sigmoid", vec![s], vec![], "se_gate");
                (self.node("Mul", vec![x, s], vec![], "se_scale"), size)
            }
        })
    }
}

fn half_tensor(name: &str, t: &Tensor) -> pb::TensorProto {
    let t = t.to_kind(Kind::Half).to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut raw = vec![0u8; numel * 2];
    t.copy_data_u8(&mut raw, numel);
    pb::TensorProto {
        name: Some(name.into()),
        dims: t.size(),
        data_type: Some(pb::tensor_proto::DataType::Float16 as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn scalar(name: &str, v: f32) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: vec![],
        data_type: Some(pb::tensor_proto::DataType::Float as i32),
        raw_data: Some(v.to_le_bytes().to_vec()),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::dimension::Value;
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(n) => Value::DimValue(*n),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Serialises the model (in eval mode) as ONNX bytes.
pub fn export(model: &Model, options: &ExportOptions) -> Result<Vec<u8>> {
    let network = &model.network;
    if options.image_size < 32 {
        return Err(Error::new(ErrorCode::ExportFailed, "image_size must be at least 32"));
    }
    if !options.class_names.is_empty() && options.class_names.len() as i64 != network.num_classes {
        return Err(Error::new(
            ErrorCode::ExportFailed,
            format!("{} class names for a {}-class head", options.class_names.len(), network.num_classes),
        ));
    }
    let vars: BTreeMap<String, Tensor> = model.state_dict().into_iter().collect();
    let mut b =
        Builder { vars: &vars, fp16: options.fp16_weights, nodes: Vec::new(), initializers: Vec::new(), counter: 0 };
    let (features, _) = b.ops(&network.body, INPUT_NAME.to_string(), options.image_size)?;
    let (logits, _) = b.op(&network.head(), features, 1)?;
    // Name the graph output.
    let last = b.nodes.last_mut().expect("a graph has nodes");
    debug_assert_eq!(last.output[0], logits);
    last.output[0] = OUTPUT_NAME.into();

    let graph = pb::GraphProto {
        name: Some(format!("petal_{}", network.arch)),
        node: b.nodes,
        initializer: b.initializers,
        input: vec![value_info(INPUT_NAME, &[None, Some(3), Some(options.image_size), Some(options.image_size)])],
        output: vec![value_info(OUTPUT_NAME, &[None, Some(network.num_classes)])],
        ..Default::default()
    };
    let prop = |k: &str, v: String| pb::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    let mut props = vec![
        prop(meta::VERSION, env!("CARGO_PKG_VERSION").into()),
        prop(meta::ARCH, network.arch.name().into()),
        prop(meta::IMAGE_SIZE, options.image_size.to_string()),
        prop(meta::CLASS_NAMES, serde_json::to_string(&options.class_names).expect("names serialize")),
        prop(meta::TRANSFORM, options.transform.to_string()),
    ];
    if let Some(d) = &options.provenance_digest {
        props.push(prop(meta::PROVENANCE, d.clone()));
    }
    let model_proto = pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("petal".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        model_version: None,
        doc_string: options.model_name.clone(),
        graph: Some(graph),
        metadata_props: props,
        ..Default::default()
    };
    Ok(model_proto.encode_to_vec())
}

/// A weight file (`.pth` or a petal checkpoint) exported to ONNX, and what was read from it.
pub struct ExportedWeights {
    pub onnx: Vec<u8>,
    /// sha256 of the weight file.
    pub sha256: String,
    pub classes: i64,
    pub image_size: i64,
    /// The catalog entry the file is, when it is a known one.
    pub catalog: Option<&'static crate::train::catalog::CatalogEntry>,
}

/// What `export_weights` may be told; each field left at its default is taken from the
/// checkpoint, the catalog or petal's defaults.
#[derive(Debug, Clone, Default)]
pub struct WeightsExport {
    /// The class names (default: the checkpoint's, else ImageNet's for 1000 classes).
    pub class_names: Option<Vec<String>>,
    /// The graph's square input size (default: the eval transform's crop).
    pub image_size: Option<i64>,
    /// The model's name, recorded in the ONNX metadata.
    pub model_name: Option<String>,
    /// Store the weights as float16.
    pub fp16: bool,
}

/// Exports a weight file: class names from `class_names`, else the checkpoint's metadata, else
/// ImageNet's for a 1000-class head, else `class_i`; the eval transform from the checkpoint's
/// metadata, else the catalog entry, else the default; `image_size` overrides its crop (the
/// graph's input size).
pub fn export_weights(arch: crate::train::arch::Arch, bytes: &[u8], request: WeightsExport) -> Result<ExportedWeights> {
    let WeightsExport { class_names, image_size, model_name, fp16 } = request;
    use crate::train::finetune::{checkpoint_metadata, META_CLASS_NAMES, META_EVAL_TRANSFORM};
    use crate::vision::EvalTransform;

    let sha256 = crate::foundation::hash::sha256_hex(bytes);
    let tensors = crate::train::weights::read_bytes(bytes)?;
    let classes = crate::train::weights::head_classes(arch, &tensors).unwrap_or(1000);
    let mut model = Model::new(arch.network(classes), tch::Device::Cpu);
    model.load_state_dict(&tensors, false)?;
    let meta = checkpoint_metadata(bytes).unwrap_or_default();
    let meta_names: Option<Vec<String>> = meta.get(META_CLASS_NAMES).and_then(|v| serde_json::from_str(v).ok());
    let meta_transform: Option<EvalTransform> =
        meta.get(META_EVAL_TRANSFORM).and_then(|v| serde_json::from_str(v).ok());
    let names = match class_names.or(meta_names) {
        Some(names) => names,
        None if classes == 1000 => serde_json::from_str(include_str!("../../registry/catalog/imagenet_classes.json"))
            .expect("valid class list"),
        None => (0..classes).map(|i| format!("class_{i}")).collect(),
    };
    let catalog = crate::train::catalog::Catalog::embedded().by_sha256(&sha256).filter(|e| e.arch == arch);
    let mut transform = match (meta_transform, catalog) {
        (Some(t), _) => t,
        (None, Some(e)) => e.eval_transform.clone(),
        (None, None) => EvalTransform::default(),
    };
    if let Some(size) = image_size {
        let size =
            u32::try_from(size).map_err(|_| Error::new(ErrorCode::ExportFailed, "image_size is out of range"))?;
        transform.crop = size;
        transform.resize = transform.resize.max(size);
    }
    let image_size = i64::from(transform.crop);
    let options = ExportOptions {
        image_size,
        class_names: names,
        transform: serde_json::to_value(&transform).expect("serializes"),
        provenance_digest: Some(format!("sha256:{sha256}")),
        model_name,
        fp16_weights: fp16,
    };
    let onnx = export(&model, &options)?;
    Ok(ExportedWeights { onnx, sha256, classes, image_size, catalog })
}
