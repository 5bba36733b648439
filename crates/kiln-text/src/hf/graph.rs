//! The encoder of a Hugging Face folder written as an ONNX graph.

use kiln_backend_ort::onnx_build::{Attr, Dim, Elem, GraphBuilder};
use kiln_core::BackendError;

use super::{EncoderConfig, Family, Weights};

/// Where position ids start: RoBERTa counts from the padding id + 1.
pub(super) fn position_offset(config: &EncoderConfig, family: Family) -> i64 {
    match family {
        Family::Bert | Family::Distilbert => 0,
        Family::Roberta | Family::Mpnet => config.pad_token_id.unwrap_or(1) + 1,
    }
}

/// The encoder as ONNX: embeddings, `num_hidden_layers` post-LayerNorm transformer blocks,
/// and, for a classifier, BERT's pooler + classifier or RoBERTa's classification head.
pub(super) fn build_graph(
    config: &EncoderConfig,
    family: Family,
    labels: Option<usize>,
    w: &Weights<'_>,
) -> Result<Vec<u8>, BackendError> {
    let h = config.hidden_size;
    let heads = config.num_attention_heads;
    let head_dim = h / heads;
    let eps = config.layer_norm_eps as f32;
    let mut g = GraphBuilder::new();
    let batch_seq = [Dim::Named("batch"), Dim::Named("sequence")];

    // Embeddings: words + positions (+ token types), then LayerNorm.
    g.input("input_ids", Elem::Int64, &batch_seq);
    g.input("attention_mask", Elem::Int64, &batch_seq);
    let vocab = w
        .tensors
        .tensor(&format!("{}embeddings.word_embeddings.weight", w.prefix))
        .map(|t| t.shape().first().copied().unwrap_or(0))
        .unwrap_or(0);
    let words = g.weight("word_embeddings", &[vocab, h], &w.get("embeddings.word_embeddings.weight", &[vocab, h])?);
    let mut positions = w.get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?;
    let types = if matches!(family, Family::Mpnet | Family::Distilbert) { 0 } else { config.type_vocab_size };
    let token_types = if types > 1 {
        g.input("token_type_ids", Elem::Int64, &batch_seq);
        Some(g.weight(
            "token_type_embeddings",
            &[types, h],
            &w.get("embeddings.token_type_embeddings.weight", &[types, h])?,
        ))
    } else {
        // One token type: its row is a constant, folded into every position.
        if types == 1 && w.has("embeddings.token_type_embeddings.weight") {
            let row = w.get("embeddings.token_type_embeddings.weight", &[1, h])?;
            for p in positions.chunks_exact_mut(h) {
                p.iter_mut().zip(&row).for_each(|(a, b)| *a += b);
            }
        }
        None
    };
    let positions = g.weight("position_embeddings", &[config.max_position_embeddings, h], &positions);
    let offset = position_offset(config, family);
    let x = g.op("Gather", &[&words, "input_ids"], &[]);
    let seq = g.op("Shape", &["input_ids"], &[Attr::Int("start", 1), Attr::Int("end", 2)]);
    let start = g.int64s("position_start", &[1], &[offset]);
    let end = g.op("Add", &[&seq, &start], &[]);
    let axis0 = g.int64s("axis_0", &[1], &[0]);
    let pos = g.op("Slice", &[&positions, &start, &end, &axis0], &[]);
    let mut x = g.op("Add", &[&x, &pos], &[]);
    if let Some(types) = token_types {
        let t = g.op("Gather", &[&types, "token_type_ids"], &[]);
        x = g.op("Add", &[&x, &t], &[]);
    }
    let (scale, shift) = w.layer_norm("embeddings.LayerNorm", h)?;
    let scale = g.weight("embeddings_ln_scale", &[h], &scale);
    let shift = g.weight("embeddings_ln_bias", &[h], &shift);
    x = g.op("LayerNormalization", &[&x, &scale, &shift], &[Attr::Int("axis", -1), Attr::Float("epsilon", eps)]);

    // The additive attention mask: 0 for tokens, a large negative number for padding, [B,1,1,S].
    let mask = g.op("Cast", &["attention_mask"], &[Attr::Int("to", Elem::Float as i64)]);
    let one = g.weight("one", &[], &[1.0]);
    let padding = g.op("Sub", &[&one, &mask], &[]);
    let big = g.weight("mask_value", &[], &[-1e9]);
    let bias = g.op("Mul", &[&padding, &big], &[]);
    let axes12 = g.int64s("axes_1_2", &[2], &[1, 2]);
    let mut mask_bias = g.op("Unsqueeze", &[&bias, &axes12], &[]);
    if family == Family::Mpnet {
        let position_bias = relative_position_bias(&mut g, config, w, &seq)?;
        mask_bias = g.op("Add", &[&mask_bias, &position_bias], &[]);
    }
    // Per block: Q, K, V, attention output, its LayerNorm, FFN in, FFN out, the output LayerNorm.
    let names: [&str; 8] = match family {
        Family::Mpnet => [
            "attention.attn.q",
            "attention.attn.k",
            "attention.attn.v",
            "attention.attn.o",
            "attention.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ],
        Family::Distilbert => [
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "sa_layer_norm",
            "ffn.lin1",
            "ffn.lin2",
            "output_layer_norm",
        ],
        Family::Bert | Family::Roberta => [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ],
    };
    let blocks = if family == Family::Distilbert { "transformer.layer" } else { "encoder.layer" };

    let qkv_shape = g.int64s("qkv_shape", &[4], &[0, 0, 3 * heads as i64, head_dim as i64]);
    let merge_shape = g.int64s("merge_shape", &[3], &[0, 0, h as i64]);
    let split = g.int64s("qkv_split", &[3], &[heads as i64; 3]);
    let scaling = 1.0 / (head_dim as f32).sqrt();
    for layer in 0..config.num_hidden_layers {
        let p = format!("{blocks}.{layer}.");
        // Q, K and V as one MatMul; 1/sqrt(head_dim) folded into Q's weights.
        let mut fused_w = vec![0f32; h * 3 * h];
        let mut fused_b = Vec::with_capacity(3 * h);
        for (part, name) in names[..3].iter().enumerate() {
            let (wt, b) = w.linear(&format!("{p}{name}"), h, h)?;
            let factor = if part == 0 { scaling } else { 1.0 };
            for r in 0..h {
                for c in 0..h {
                    fused_w[r * 3 * h + part * h + c] = wt[r * h + c] * factor;
                }
            }
            fused_b.extend(b.iter().map(|v| v * factor));
        }
        let qkv_w = g.weight(&format!("l{layer}_qkv_w"), &[h, 3 * h], &fused_w);
        let qkv_b = g.weight(&format!("l{layer}_qkv_b"), &[3 * h], &fused_b);
        let qkv = g.op("MatMul", &[&x, &qkv_w], &[]);
        let qkv = g.op("Add", &[&qkv, &qkv_b], &[]);
        let qkv = g.op("Reshape", &[&qkv, &qkv_shape], &[]);
        let qkv = g.op("Transpose", &[&qkv], &[Attr::Ints("perm", &[0, 2, 1, 3])]);
        let parts = g.node("", "Split", &[&qkv, &split], 3, &[Attr::Int("axis", 1)]);
        let kt = g.op("Transpose", &[&parts[1]], &[Attr::Ints("perm", &[0, 1, 3, 2])]);
        let scores = g.op("MatMul", &[&parts[0], &kt], &[]);
        let scores = g.op("Add", &[&scores, &mask_bias], &[]);
        let probs = g.op("Softmax", &[&scores], &[Attr::Int("axis", -1)]);
        let context = g.op("MatMul", &[&probs, &parts[2]], &[]);
        let context = g.op("Transpose", &[&context], &[Attr::Ints("perm", &[0, 2, 1, 3])]);
        let context = g.op("Reshape", &[&context, &merge_shape], &[]);
        let attended = linear(&mut g, w, &format!("{p}{}", names[3]), &context, h, h, &format!("l{layer}_ao"))?;
        let residual = g.op("Add", &[&attended, &x], &[]);
        x = layer_norm(&mut g, w, &format!("{p}{}", names[4]), &residual, h, eps, &format!("l{layer}_ln1"))?;
        let inner = config.intermediate_size;
        let up = linear(&mut g, w, &format!("{p}{}", names[5]), &x, h, inner, &format!("l{layer}_up"))?;
        let act = activation(&mut g, &config.hidden_act, &up, layer)?;
        let down = linear(&mut g, w, &format!("{p}{}", names[6]), &act, inner, h, &format!("l{layer}_down"))?;
        let residual = g.op("Add", &[&down, &x], &[]);
        x = layer_norm(&mut g, w, &format!("{p}{}", names[7]), &residual, h, eps, &format!("l{layer}_ln2"))?;
    }

    match labels {
        None => g.output(
            &x,
            "last_hidden_state",
            Elem::Float,
            &[Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(h as i64)],
        ),
        Some(n) => {
            let zero = g.int64s("first_token", &[], &[0]);
            let cls = g.op("Gather", &[&x, &zero], &[Attr::Int("axis", 1)]);
            // Heads are stored outside the base model's prefix.
            let head = Weights { tensors: w.tensors, prefix: String::new(), dir: w.dir };
            let logits = match family {
                Family::Bert => {
                    let pooled = linear(&mut g, w, "pooler.dense", &cls, h, h, "pooler")?;
                    let pooled = g.op("Tanh", &[&pooled], &[]);
                    linear(&mut g, &head, "classifier", &pooled, h, n, "classifier")?
                }
                Family::Distilbert => {
                    let dense = linear(&mut g, &head, "pre_classifier", &cls, h, h, "pre_classifier")?;
                    let dense = g.op("Relu", &[&dense], &[]);
                    linear(&mut g, &head, "classifier", &dense, h, n, "classifier")?
                }
                Family::Roberta | Family::Mpnet => {
                    let dense = linear(&mut g, &head, "classifier.dense", &cls, h, h, "classifier_dense")?;
                    let dense = g.op("Tanh", &[&dense], &[]);
                    linear(&mut g, &head, "classifier.out_proj", &dense, h, n, "classifier_out")?
                }
            };
            g.output(&logits, "logits", Elem::Float, &[Dim::Named("batch"), Dim::Fixed(n as i64)]);
        }
    }
    Ok(g.finish("kiln_hf_encoder", 17))
}

/// MPNet's relative position bias `[1, heads, S, S]`: the bucket of each (query, key) distance
/// (T5's bidirectional buckets, max distance 128), looked up in
/// `encoder.relative_attention_bias` and shared by every layer.
fn relative_position_bias(
    g: &mut GraphBuilder,
    config: &EncoderConfig,
    w: &Weights<'_>,
    seq: &str,
) -> Result<String, BackendError> {
    let buckets = config.relative_attention_num_buckets.unwrap_or(32);
    let heads = config.num_attention_heads;
    let table = w.get("encoder.relative_attention_bias.weight", &[buckets, heads])?;
    let table = g.weight("relative_attention_bias", &[buckets, heads], &table);
    let p = config.max_position_embeddings;
    let mut index = Vec::with_capacity(p * p);
    for i in 0..p {
        for j in 0..p {
            index.push(relative_bucket(j as i64 - i as i64, buckets, 128));
        }
    }
    let index = g.int64s("relative_buckets", &[p, p], &index);
    let starts = g.int64s("relative_starts", &[2], &[0, 0]);
    let ends = g.op("Concat", &[seq, seq], &[Attr::Int("axis", 0)]);
    let axes = g.int64s("relative_axes", &[2], &[0, 1]);
    let index = g.op("Slice", &[&index, &starts, &ends, &axes], &[]);
    let bias = g.op("Gather", &[&table, &index], &[]);
    let bias = g.op("Transpose", &[&bias], &[Attr::Ints("perm", &[2, 0, 1])]);
    let axis = g.int64s("relative_batch_axis", &[1], &[0]);
    Ok(g.op("Unsqueeze", &[&bias, &axis], &[]))
}

/// The bucket of a relative position (key - query), as transformers computes it for MPNet and
/// T5: half the buckets per direction, exact below a quarter, logarithmic up to `max_distance`
/// (float32 arithmetic, truncated).
fn relative_bucket(relative: i64, buckets: usize, max_distance: usize) -> i64 {
    let half = (buckets / 2) as i64;
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let exact = half / 2;
    if n < exact {
        bucket += n;
    } else {
        // torch: log(float32(n) / max_exact) / float32(math.log(max_distance / max_exact)) * ...
        let denominator = (max_distance as f64 / exact as f64).ln() as f32;
        let scaled = (n as f32 / exact as f32).ln() / denominator * (half - exact) as f32;
        bucket += (exact + scaled as i64).min(half - 1);
    }
    bucket
}

fn linear(
    g: &mut GraphBuilder,
    w: &Weights<'_>,
    name: &str,
    x: &str,
    inputs: usize,
    outputs: usize,
    id: &str,
) -> Result<String, BackendError> {
    let (wt, b) = w.linear(name, inputs, outputs)?;
    let wt = g.weight(&format!("{id}_w"), &[inputs, outputs], &wt);
    let b = g.weight(&format!("{id}_b"), &[outputs], &b);
    let y = g.op("MatMul", &[x, &wt], &[]);
    Ok(g.op("Add", &[&y, &b], &[]))
}

fn layer_norm(
    g: &mut GraphBuilder,
    w: &Weights<'_>,
    name: &str,
    x: &str,
    hidden: usize,
    eps: f32,
    id: &str,
) -> Result<String, BackendError> {
    let (scale, shift) = w.layer_norm(name, hidden)?;
    let scale = g.weight(&format!("{id}_scale"), &[hidden], &scale);
    let shift = g.weight(&format!("{id}_bias"), &[hidden], &shift);
    Ok(g.op("LayerNormalization", &[x, &scale, &shift], &[Attr::Int("axis", -1), Attr::Float("epsilon", eps)]))
}

/// `hidden_act`: exact (erf) GELU, its tanh approximation, or ReLU.
fn activation(g: &mut GraphBuilder, act: &str, x: &str, layer: usize) -> Result<String, BackendError> {
    match act {
        "gelu" => {
            // x * 0.5 * (1 + erf(x / sqrt(2))): the form ONNX Runtime fuses into one Gelu kernel.
            let sqrt2 = g.weight(&format!("l{layer}_sqrt2"), &[], &[std::f32::consts::SQRT_2]);
            let one = g.weight(&format!("l{layer}_gelu_one"), &[], &[1.0]);
            let half = g.weight(&format!("l{layer}_gelu_half"), &[], &[0.5]);
            let d = g.op("Div", &[x, &sqrt2], &[]);
            let e = g.op("Erf", &[&d], &[]);
            let a = g.op("Add", &[&e, &one], &[]);
            let m = g.op("Mul", &[x, &a], &[]);
            Ok(g.op("Mul", &[&m, &half], &[]))
        }
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            let c = g.weight(&format!("l{layer}_gelu_c"), &[], &[0.044_715]);
            let k = g.weight(&format!("l{layer}_gelu_k"), &[], &[(2.0 / std::f32::consts::PI).sqrt()]);
            let one = g.weight(&format!("l{layer}_gelu_one"), &[], &[1.0]);
            let half = g.weight(&format!("l{layer}_gelu_half"), &[], &[0.5]);
            let x2 = g.op("Mul", &[x, x], &[]);
            let x3 = g.op("Mul", &[&x2, x], &[]);
            let cx3 = g.op("Mul", &[&x3, &c], &[]);
            let inner = g.op("Add", &[x, &cx3], &[]);
            let inner = g.op("Mul", &[&inner, &k], &[]);
            let t = g.op("Tanh", &[&inner], &[]);
            let a = g.op("Add", &[&t, &one], &[]);
            let m = g.op("Mul", &[x, &a], &[]);
            Ok(g.op("Mul", &[&m, &half], &[]))
        }
        "relu" => Ok(g.op("Relu", &[x], &[])),
        other => Err(BackendError::Load(format!(
            "config.json hidden_act '{other}' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
        ))),
    }
}
