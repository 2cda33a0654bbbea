//! Multi-document YAML read and written the way Kubernetes reads it.
//!
//! `kubectl` and the API server decode YAML with go-yaml v2, which follows YAML 1.1: a plain
//! `0755` is the octal number 493, a plain `yes`, `on` or `n` is a boolean. The serde YAML
//! crates follow YAML 1.2, where those are the strings `"0755"` and `"yes"`; re-writing a
//! manifest through them would turn `defaultMode: 0755` into a string and a quoted env value
//! `"yes"` into a bare `yes` that Kubernetes reads as `true`. So this module reads parser
//! events (saphyr-parser, which reports quoting styles and positions), resolves plain
//! scalars by the YAML 1.1 rules, and writes YAML that quotes every string the reader would
//! not read back as that same string.
//!
//! Positions of each document are kept, so a document that does not change is written back
//! byte for byte, comments included.

use std::ops::Range;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

/// A YAML text that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct YamlError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// One document of a YAML stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Bytes of the input from the end of the previous document to the end of this one;
    /// the sources of all documents, in order, make up the whole input.
    pub source: Range<usize>,
    /// Bytes of the document's content (after any `---` line and leading comments).
    pub content_start: usize,
    /// The content; `Null` for an empty document.
    pub value: Value,
}

/// Reads every document of `text`.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let bytes = ByteOffsets::new(text);
    let mut parser = Parser::new_from_str(text);
    let mut documents = Vec::new();
    let mut builder = Builder::default();
    let mut previous_end = 0;
    let mut content_start = None;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|error| YamlError {
            line: error.marker().line(),
            column: error.marker().col() + 1,
            message: error.info().to_owned(),
        })?;
        let at = |message: String| YamlError {
            line: span.start.line(),
            column: span.start.col() + 1,
            message,
        };
        match event {
            Event::DocumentStart(_) => {
                builder = Builder::default();
                content_start = None;
            }
            Event::DocumentEnd => {
                let end = bytes.of(span.start.index()).max(previous_end);
                let value = std::mem::take(&mut builder).finish().map_err(at)?;
                let content_start = content_start.unwrap_or(end);
                documents.push(Document {
                    source: previous_end..end,
                    content_start,
                    value,
                });
                previous_end = end;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
            event => {
                if content_start.is_none() {
                    content_start = Some(bytes.of(span.start.index()));
                }
                builder.event(event, span).map_err(at)?;
            }
        }
    }
    // Trailing comments or blank lines after the last document belong to it.
    if let Some(last) = documents.last_mut() {
        last.source.end = text.len();
    }
    Ok(documents)
}

/// Maps the parser's character positions to byte offsets.
struct ByteOffsets(Option<Vec<usize>>);

impl ByteOffsets {
    fn new(text: &str) -> Self {
        if text.is_ascii() {
            Self(None)
        } else {
            Self(Some(
                text.char_indices()
                    .map(|(offset, _)| offset)
                    .chain([text.len()])
                    .collect(),
            ))
        }
    }

    fn of(&self, char_index: usize) -> usize {
        match &self.0 {
            None => char_index,
            Some(offsets) => offsets
                .get(char_index)
                .copied()
                .unwrap_or_else(|| offsets.last().copied().unwrap_or(0)),
        }
    }
}

/// Builds one document's value from its events.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: Vec<(usize, Value)>,
    root: Option<Value>,
}

enum Frame {
    Sequence {
        anchor: usize,
        items: Vec<Value>,
    },
    Mapping {
        anchor: usize,
        map: Map<String, Value>,
        key: Option<(String, bool)>,
        /// Keys that came from a merge (`<<`), which the mapping's own keys override.
        merged: Vec<String>,
        line: usize,
    },
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), String> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|tag| tag.suffix.clone());
                let value = scalar(&text, style, tag.as_deref())?;
                let is_merge_key = style == ScalarStyle::Plain && text == "<<";
                if let Some(Frame::Mapping {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    *key = Some((text.into_owned(), is_merge_key));
                    return Ok(());
                }
                self.remember(anchor, &value);
                self.push_value(value)
            }
            Event::Alias(anchor) => {
                let value = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(id, _)| *id == anchor)
                    .map(|(_, value)| value.clone())
                    .ok_or("alias to an unknown anchor")?;
                if let Some(Frame::Mapping {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    *key = Some((key_text(&value), false));
                    return Ok(());
                }
                self.push_value(value)
            }
            Event::SequenceStart(anchor, _) => {
                self.check_key_is_scalar()?;
                self.stack.push(Frame::Sequence {
                    anchor,
                    items: Vec::new(),
                });
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.check_key_is_scalar()?;
                self.stack.push(Frame::Mapping {
                    anchor,
                    map: Map::new(),
                    key: None,
                    merged: Vec::new(),
                    line: span.start.line(),
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (anchor, value) = match self.stack.pop() {
                    Some(Frame::Sequence { anchor, items }) => (anchor, Value::Array(items)),
                    Some(Frame::Mapping { anchor, map, .. }) => (anchor, Value::Object(map)),
                    None => return Err("unbalanced collection end".to_owned()),
                };
                self.remember(anchor, &value);
                self.push_value(value)
            }
            _ => Ok(()),
        }
    }

    fn check_key_is_scalar(&self) -> Result<(), String> {
        match self.stack.last() {
            Some(Frame::Mapping { key: None, .. }) => {
                Err("a mapping or sequence as a mapping key".to_owned())
            }
            _ => Ok(()),
        }
    }

    fn remember(&mut self, anchor: usize, value: &Value) {
        if anchor != 0 {
            self.anchors.push((anchor, value.clone()));
        }
    }

    fn push_value(&mut self, value: Value) -> Result<(), String> {
        match self.stack.last_mut() {
            None => {
                self.root = Some(value);
                Ok(())
            }
            Some(Frame::Sequence { items, .. }) => {
                items.push(value);
                Ok(())
            }
            Some(Frame::Mapping {
                map,
                key,
                merged,
                line,
                ..
            }) => {
                let (key, is_merge) = key.take().ok_or("a value without a key")?;
                if is_merge {
                    // YAML 1.1 merge key: entries of the merged mapping(s) the mapping lacks.
                    let sources = match value {
                        Value::Object(source) => vec![source],
                        Value::Array(items) => items
                            .into_iter()
                            .map(|item| match item {
                                Value::Object(source) => Ok(source),
                                _ => Err("a merge key (<<) takes mappings only".to_owned()),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => return Err("a merge key (<<) takes mappings only".to_owned()),
                    };
                    for source in sources {
                        for (key, value) in source {
                            if !map.contains_key(&key) {
                                merged.push(key.clone());
                                map.insert(key, value);
                            }
                        }
                    }
                    return Ok(());
                }
                if let Some(at) = merged.iter().position(|merged_key| *merged_key == key) {
                    merged.swap_remove(at);
                } else if map.contains_key(&key) {
                    return Err(format!(
                        "key {key:?} appears twice in the mapping starting on line {line}"
                    ));
                }
                map.insert(key, value);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<Value, String> {
        if !self.stack.is_empty() {
            return Err("the document ends inside a collection".to_owned());
        }
        Ok(self.root.unwrap_or(Value::Null))
    }
}

/// A key as text: YAML keys in Kubernetes objects are strings; other scalars keep their text.
fn key_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Result<Value, String> {
    match tag {
        Some("str") => return Ok(Value::String(text.to_owned())),
        Some("int" | "float" | "bool" | "null") => {
            return match resolve_plain(text) {
                Value::String(_) => Err(format!(
                    "{text:?} is not a valid !!{}",
                    tag.unwrap_or_default()
                )),
                value => Ok(value),
            };
        }
        _ => {}
    }
    Ok(match style {
        ScalarStyle::Plain => resolve_plain(text),
        _ => Value::String(text.to_owned()),
    })
}

/// The value of a plain scalar under YAML 1.1, as go-yaml v2 (and so Kubernetes) reads it.
pub fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Value::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Value::Bool(false);
        }
        _ => {}
    }
    if let Some(number) = integer(text) {
        return Value::Number(number);
    }
    if is_float(text)
        && let Some(number) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(number);
    }
    Value::String(text.to_owned())
}

/// YAML 1.1 integers: decimal, `0b` binary, `0x` hex, leading-zero octal, `_` separators.
fn integer(text: &str) -> Option<Number> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let cleaned: String = digits.chars().filter(|c| *c != '_').collect();
    let (radix, body) = if let Some(body) = cleaned.strip_prefix("0b") {
        (2, body)
    } else if let Some(body) = cleaned.strip_prefix("0x") {
        (16, body)
    } else if let Some(body) = cleaned.strip_prefix("0o") {
        (8, body)
    } else if cleaned.len() > 1 && cleaned.starts_with('0') {
        (8, &cleaned[1..])
    } else {
        (10, cleaned.as_str())
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) || digits.starts_with('_') {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        let value = 0i64.checked_sub_unsigned(magnitude)?;
        Some(Number::from(value))
    } else {
        Some(Number::from(magnitude))
    }
}

/// go-yaml v2's float syntax: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => digits(fraction),
        Some((whole, fraction)) => digits(whole) && (fraction.is_empty() || digits(fraction)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// Writes `value` as a block-style YAML document (ending in a newline).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_mapping(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => write_sequence(items, 0, &mut out),
        scalar => {
            write_scalar(scalar, 0, &mut out);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, width: usize) {
    out.extend(std::iter::repeat_n(' ', width));
}

fn is_collection(value: &Value) -> bool {
    matches!(value, Value::Object(map) if !map.is_empty())
        || matches!(value, Value::Array(items) if !items.is_empty())
}

fn write_mapping(map: &Map<String, Value>, width: usize, out: &mut String) {
    for (position, (key, value)) in map.iter().enumerate() {
        // The first entry of a mapping inside a sequence item follows the "- " directly.
        if position > 0 || out.ends_with('\n') || out.is_empty() {
            indent(out, width);
        }
        write_string(key, width, out, true);
        out.push(':');
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                write_mapping(inner, width + 2, out);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                // kubectl's style: a sequence under a key is not indented further.
                write_sequence(items, width, out);
            }
            scalar => {
                out.push(' ');
                write_scalar(scalar, width + 2, out);
                out.push('\n');
            }
        }
    }
}

fn write_sequence(items: &[Value], width: usize, out: &mut String) {
    for item in items {
        indent(out, width);
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_mapping(map, width + 2, out),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_sequence(inner, width + 2, out);
            }
            scalar => {
                write_scalar(scalar, width + 2, out);
                out.push('\n');
            }
        }
    }
}

fn write_scalar(value: &Value, width: usize, out: &mut String) {
    debug_assert!(!is_collection(value));
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => out.push_str(&number.to_string()),
        Value::String(text) => write_string(text, width, out, false),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// Writes a string plain when the reader reads it back as the same string, as a literal
/// block when it spans lines (values only), else double-quoted with JSON escapes (which
/// YAML's double-quoted style accepts).
fn write_string(text: &str, width: usize, out: &mut String, is_key: bool) {
    if is_plain_safe(text) {
        out.push_str(text);
    } else if !is_key && literal_block_safe(text) {
        let trailing_newlines = text.len() - text.trim_end_matches('\n').len();
        out.push_str(match trailing_newlines {
            0 => "|-",
            1 => "|",
            _ => "|+",
        });
        for line in text.trim_end_matches('\n').split('\n') {
            out.push('\n');
            if !line.is_empty() {
                indent(out, width);
                out.push_str(line);
            }
        }
        for _ in 1..trailing_newlines {
            out.push('\n');
        }
    } else {
        out.push_str(&Value::String(text.to_owned()).to_string());
    }
}

fn is_plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || " -_./:@+=$()<>;,~^".contains(c);
    first.is_ascii_alphanumeric() | matches!(first, '/' | '_' | '.' | '$')
        && text.chars().all(allowed)
        && !text.ends_with([' ', ':'])
        && !text.contains(": ")
        && !text.contains(" #")
        && matches!(resolve_plain(text), Value::String(_))
}

fn literal_block_safe(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\n', '\t'])
        && text
            .chars()
            .all(|c| c == '\n' || c == '\t' || !c.is_control())
        && !text.contains(" \n")
        && !text.ends_with(' ')
        && !text.contains('\u{feff}')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let documents = parse_documents(text).unwrap();
        assert_eq!(documents.len(), 1, "{text}");
        documents.into_iter().next().unwrap().value
    }

    #[test]
    fn scalars_resolve_as_kubernetes_reads_them() {
        let table = [
            ("0755", json!(493)),
            ("'0755'", json!("0755")),
            ("420", json!(420)),
            ("0x1F", json!(31)),
            ("-12", json!(-12)),
            ("1_000", json!(1000)),
            // go-yaml v2 fails to read 08 as octal, then reads it as a float.
            ("08", json!(8.0)),
            ("yes", json!(true)),
            ("Off", json!(false)),
            ("n", json!(false)),
            ("\"yes\"", json!("yes")),
            ("~", json!(null)),
            ("", json!(null)),
            ("1.5", json!(1.5)),
            ("1e3", json!(1000.0)),
            ("10s", json!("10s")),
            ("1.2.3", json!("1.2.3")),
            ("!!str 0755", json!("0755")),
            ("v1", json!("v1")),
        ];
        for (text, expected) in table {
            assert_eq!(one(&format!("k: {text}\n"))["k"], expected, "{text}");
        }
    }

    #[test]
    fn documents_keep_their_source() {
        let text =
            "# head\na: 1\n---\n# only a comment\n---\nb: [1, 2]\n...\n---\nc: {d: e}\n# tail\n";
        let documents = parse_documents(text).unwrap();
        let values: Vec<Value> = documents.iter().map(|d| d.value.clone()).collect();
        assert_eq!(
            values,
            [
                json!({"a": 1}),
                json!(null),
                json!({"b": [1, 2]}),
                json!({"c": {"d": "e"}})
            ]
        );
        let rebuilt: String = documents.iter().map(|d| &text[d.source.clone()]).collect();
        assert_eq!(rebuilt, text);
        assert_eq!(
            &text[documents[0].content_start..documents[0].content_start + 4],
            "a: 1"
        );
        assert!(text[documents[3].source.clone()].ends_with("# tail\n"));
    }

    #[test]
    fn anchors_and_merge_keys() {
        let value = one("base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\nlist: [*b]\n");
        assert_eq!(value["derived"], json!({"x": 1, "y": 3}));
        assert_eq!(value["list"], json!([{"x": 1, "y": 2}]));
    }

    #[test]
    fn errors_name_the_place() {
        let error = parse_documents("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(error.line >= 2, "{error}");
        let error = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert!(error.message.contains("appears twice"), "{error}");
        assert!(parse_documents("a: *nowhere\n").is_err());
    }

    #[test]
    fn written_strings_read_back_unchanged() {
        let strings = [
            "yes",
            "no",
            "on",
            "y",
            "0755",
            "8080",
            "1e3",
            "1.5",
            "-",
            "- x",
            "a: b",
            "a #b",
            "#c",
            "true",
            "null",
            "",
            " lead",
            "trail ",
            "multi\nline\n",
            "multi\nline",
            "keep\n\n",
            "{x}",
            "[x]",
            "*a",
            "&a",
            "!t",
            "%p",
            "@at",
            "`b`",
            "'q'",
            "\"dq\"",
            "tab\there",
            "é",
            "http://x:80/p",
            "app.kubernetes.io/name",
            "key=value",
            "10s",
            "--flag=1",
            "\u{7}",
            " \n",
            "a\r\nb",
            "x:",
            "0o17",
            "0b101",
            ".inf",
            "~",
        ];
        for text in strings {
            let value = json!({ text: [text, {"inner": text}], "k": text });
            let written = to_string(&value);
            assert_eq!(one(&written), value, "{text:?} written as:\n{written}");
        }
    }

    #[test]
    fn writes_block_style() {
        let value = json!({"a": {"b": [1, {"c": "d", "e": []}], "f": {}}, "g": "x\ny\n"});
        assert_eq!(
            to_string(&value),
            "a:\n  b:\n  - 1\n  - c: d\n    e: []\n  f: {}\ng: |\n  x\n  y\n"
        );
    }
}
