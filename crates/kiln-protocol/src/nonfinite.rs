//! JSON's missing numbers: `NaN`, `Infinity` and `-Infinity` written as bare tokens, as
//! Python's `json` module (so tritonclient with `binary_data=False`) and Triton write them.
//! They are not JSON, and serde_json neither reads nor writes them, so they cross it as
//! marker strings: [`to_markers`] turns the bare tokens of a body (outside strings) into
//! markers before parsing, [`from_marker`] reads a marker as its float, and
//! [`restore_tokens`] turns the markers a response was written with back into tokens.

use memchr::memmem;

/// The markers: a NUL first, which no float token or ordinary text starts with.
const MARKERS: [(&str, &[u8], &[u8], f64); 3] = [
    ("\u{0}kiln:NaN", br#""\u0000kiln:NaN""#, b"NaN", f64::NAN),
    ("\u{0}kiln:-Infinity", br#""\u0000kiln:-Infinity""#, b"-Infinity", f64::NEG_INFINITY),
    ("\u{0}kiln:Infinity", br#""\u0000kiln:Infinity""#, b"Infinity", f64::INFINITY),
];

/// Whether text (a BYTES element) could pass for a marker: then a response writes non-finite
/// floats as null instead of markers.
pub(crate) fn could_collide(bytes: &[u8]) -> bool {
    memmem::find(bytes, b"\0kiln:").is_some()
}

/// `body` with its bare `NaN`, `Infinity` and `-Infinity` tokens (outside strings) replaced
/// by marker strings; `None` when it has none (the usual case: no copy).
pub(crate) fn to_markers(body: &[u8]) -> Option<Vec<u8>> {
    if memmem::find(body, b"NaN").is_none() && memmem::find(body, b"Infinity").is_none() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    let (mut i, mut in_string, mut changed) = (0, false, false);
    while i < body.len() {
        let b = body[i];
        if in_string {
            out.push(b);
            match b {
                b'\\' if i + 1 < body.len() => {
                    out.push(body[i + 1]);
                    i += 2;
                    continue;
                }
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
        } else if let Some((_, quoted, token, _)) = MARKERS.iter().find(|(_, _, token, _)| body[i..].starts_with(token))
        {
            out.extend_from_slice(quoted);
            i += token.len();
            changed = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

/// The float a marker stands for.
pub(crate) fn from_marker(text: &str) -> Option<f64> {
    MARKERS.iter().find(|(marker, ..)| *marker == text).map(|&(.., value)| value)
}

/// The token a marker stands for, for error messages.
pub(crate) fn token_of(text: &str) -> Option<&'static str> {
    MARKERS.iter().find(|(marker, ..)| *marker == text).and_then(|(_, _, token, _)| std::str::from_utf8(token).ok())
}

/// The marker to write for a non-finite float.
pub(crate) fn marker_for(value: f64) -> &'static str {
    if value.is_nan() {
        MARKERS[0].0
    } else if value < 0.0 {
        MARKERS[1].0
    } else {
        MARKERS[2].0
    }
}

/// JSON written with markers, with each marker string turned into its bare token.
pub(crate) fn restore_tokens(json: Vec<u8>) -> Vec<u8> {
    if memmem::find(&json, br#""\u0000kiln:"#).is_none() {
        return json;
    }
    let mut out = Vec::with_capacity(json.len());
    let mut rest = &json[..];
    while let Some(at) = memmem::find(rest, br#""\u0000kiln:"#) {
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at..];
        match MARKERS.iter().find(|(_, quoted, ..)| rest.starts_with(quoted)) {
            Some((_, quoted, token, _)) => {
                out.extend_from_slice(token);
                rest = &rest[quoted.len()..];
            }
            None => {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_tokens_become_markers_outside_strings_only() {
        let body = br#"{"a":[NaN,-Infinity,Infinity,1],"s":"NaN \"Infinity\"","b":"x\\"}"#;
        let marked = String::from_utf8(to_markers(body).expect("changed")).expect("utf-8");
        let value: serde_json::Value = serde_json::from_str(&marked).expect("valid JSON now");
        let a: Vec<Option<f64>> = value["a"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_str().and_then(from_marker).or(v.as_f64()))
            .collect();
        assert!(a[0].expect("nan").is_nan());
        assert_eq!(a[1..], [Some(f64::NEG_INFINITY), Some(f64::INFINITY), Some(1.0)]);
        assert_eq!(value["s"], "NaN \"Infinity\"");
        assert_eq!(value["b"], "x\\");
        assert!(to_markers(br#"{"name":"INPUT0","datatype":"INT64"}"#).is_none());
    }

    #[test]
    fn markers_written_by_serde_json_turn_back_into_tokens() {
        let json = serde_json::to_vec(&serde_json::json!([
            marker_for(f64::NAN),
            1.5,
            marker_for(f64::NEG_INFINITY),
            marker_for(f64::INFINITY),
            "plain"
        ]))
        .expect("json");
        assert_eq!(String::from_utf8(restore_tokens(json)).expect("utf-8"), r#"[NaN,1.5,-Infinity,Infinity,"plain"]"#);
        assert_eq!(token_of(marker_for(f64::NAN)), Some("NaN"));
    }
}
