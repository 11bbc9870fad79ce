//! The JSON path of a serde error, recovered from the error's position in the text.
//!
//! `serde_json` reports where in the text an error was found (line and column); this module walks
//! the text up to that byte and names the key or element being read there, in the form config
//! errors use: `rules[2].match.path_regex`. It replaces path tracking during deserialization
//! (`serde_path_to_error`), which wrapped every nested type in its own generic code: one copy per
//! document type, ~75 KB of every module. The walk runs only when there is an error, and is
//! plain code over bytes, with no generics.
//!
//! What the position points at, and so which path an error gets:
//! - an unknown field: the key's closing quote, so the path ends with that key;
//! - a bad value (wrong type, unknown variant, a value our own `Deserialize` refuses): the
//!   value's last byte, so the path is the value's;
//! - a missing field: the closing `}` of its object, so the path is the object's;
//! - a syntax error: the offending byte, inside the innermost open container.

/// The byte index serde_json's 1-based `line` and `column` point at, or `None` when the error
/// carries no position (line 0).
fn byte_index(text: &[u8], line: usize, column: usize) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let mut start = 0usize;
    let mut seen = 1usize;
    if line > 1 {
        for (i, b) in text.iter().enumerate() {
            if *b == b'\n' {
                seen += 1;
                if seen == line {
                    start = i + 1;
                    break;
                }
            }
        }
        if seen != line {
            return None;
        }
    }
    // Column 0 happens at the very start of a line (an error right after a newline).
    Some(start + column.saturating_sub(1))
}

/// Where in an object the text is. Only a value being read puts its key in the path.
enum Member {
    /// After `{` or `,`.
    ExpectKey,
    /// After a key, before its `:`.
    AfterKey(String),
    /// In the value of this key.
    InValue(String),
    /// After a value, before `,` or `}`.
    AfterValue,
}

/// One open container on the way to the error.
enum Frame {
    /// An object, and where in it the text is.
    Object(Member),
    /// An array: the index of the current element, whether it is being read (else the array
    /// itself is), and whether the last element is done (then only `,` or `]` may follow).
    Array { index: usize, in_element: bool, element_done: bool },
}

fn render(frames: &[Frame], extra_key: Option<&str>) -> String {
    let mut out = String::new();
    let push_key = |out: &mut String, k: &str| {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(k);
    };
    for frame in frames {
        match frame {
            Frame::Object(Member::InValue(k)) => push_key(&mut out, k),
            Frame::Array { index, in_element: true, .. } => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
            _ => {}
        }
    }
    if let Some(k) = extra_key {
        push_key(&mut out, k);
    }
    out
}

/// A value starts inside the innermost container.
fn value_starts(frames: &mut [Frame]) {
    if let Some(Frame::Array { in_element, element_done: false, .. }) = frames.last_mut() {
        *in_element = true;
    }
}

/// A value ends inside the innermost container.
fn value_ends(frames: &mut [Frame]) {
    match frames.last_mut() {
        Some(Frame::Array { in_element, element_done, .. }) => {
            *in_element = false;
            *element_done = true;
        }
        Some(Frame::Object(m)) => *m = Member::AfterValue,
        None => {}
    }
}

/// Reads a JSON string starting at the opening quote `text[i]`; returns its decoded text (lossy
/// for escapes we do not need to decode exactly) and the index of the closing quote, or `None`
/// when the text ends first.
fn read_string(text: &[u8], i: usize) -> (String, Option<usize>) {
    let mut out: Vec<u8> = Vec::new();
    let mut j = i + 1;
    while let Some(&b) = text.get(j) {
        match b {
            b'"' => return (String::from_utf8_lossy(&out).into_owned(), Some(j)),
            b'\\' => {
                let esc = text.get(j + 1).copied();
                match esc {
                    Some(b'n') => out.push(b'\n'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b'b') => out.push(8),
                    Some(b'f') => out.push(12),
                    Some(b'u') => {
                        let hex = text.get(j + 2..j + 6).and_then(|h| std::str::from_utf8(h).ok());
                        let c = hex.and_then(|h| u32::from_str_radix(h, 16).ok()).and_then(char::from_u32);
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.unwrap_or('\u{fffd}').encode_utf8(&mut buf).as_bytes());
                        j += 4;
                    }
                    Some(other) => out.push(other),
                    None => {}
                }
                j += 2;
            }
            _ => {
                out.push(b);
                j += 1;
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), None)
}

/// Whether an error reported at the last byte of a value is about what follows, by kind of value.
#[derive(Clone, Copy, Default)]
struct Ends {
    string: bool,
    scalar: bool,
    container: bool,
}

/// The path of whatever the byte at `at` belongs to (see the module documentation). A key at
/// `at` is part of the path only if `key_in_path` (an unknown field); other errors reported at a
/// key (a duplicate field, an unknown enum variant written as `{"variant": ...}`) are about the
/// object holding it.
///
/// serde_json reports some errors about what follows a value (a missing `}` after an enum's
/// content, the text ending) at the value's last byte: `ends` says, per kind of value, that the
/// error is of that kind, so it belongs to the container.
fn path_at_index(text: &[u8], at: usize, key_in_path: bool, ends: Ends) -> String {
    let mut frames: Vec<Frame> = Vec::new();
    let mut i = 0usize;
    while i <= at {
        let Some(&b) = text.get(i) else { break };
        match b {
            b'{' | b'[' => {
                value_starts(&mut frames);
                if i == at {
                    return render(&frames, None);
                }
                frames.push(if b == b'{' {
                    Frame::Object(Member::ExpectKey)
                } else {
                    Frame::Array { index: 0, in_element: false, element_done: false }
                });
                i += 1;
            }
            b'}' | b']' => {
                let closes = match frames.last() {
                    Some(Frame::Object(Member::ExpectKey | Member::AfterValue)) => b == b'}',
                    Some(Frame::Array { in_element: false, .. }) => b == b']',
                    _ => false,
                };
                if i == at && !closes {
                    // A bracket where a value or key belongs.
                    value_starts(&mut frames);
                    return render(&frames, None);
                }
                // At the error: a missing field or a refused container, so the container's own
                // path (the parent's segment is still open); or what follows the container.
                frames.pop();
                if i == at && !ends.container {
                    return render(&frames, None);
                }
                value_ends(&mut frames);
                if i == at {
                    return render(&frames, None);
                }
                i += 1;
            }
            b',' => {
                if i == at {
                    // Where an element belongs (`[,`), that element is what failed.
                    value_starts(&mut frames);
                    return render(&frames, None);
                }
                match frames.last_mut() {
                    Some(Frame::Array { index, element_done, .. }) => {
                        *index += 1;
                        *element_done = false;
                    }
                    Some(Frame::Object(m)) => *m = Member::ExpectKey,
                    None => {}
                }
                i += 1;
            }
            b'"' => {
                // A key when the innermost container is an object that has no key yet.
                let is_key = matches!(frames.last(), Some(Frame::Object(Member::ExpectKey)));
                let (s, end) = read_string(text, i);
                let end_index = end.unwrap_or(text.len());
                if is_key {
                    if at <= end_index {
                        return render(&frames, if key_in_path { Some(&s) } else { None });
                    }
                    if let Some(Frame::Object(m)) = frames.last_mut() {
                        *m = Member::AfterKey(s);
                    }
                } else {
                    value_starts(&mut frames);
                    if at < end_index || (at == end_index && !ends.string) {
                        return render(&frames, None);
                    }
                    value_ends(&mut frames);
                    if at == end_index {
                        return render(&frames, None);
                    }
                }
                i = end_index + 1;
            }
            b':' => {
                if let Some(Frame::Object(m)) = frames.last_mut() {
                    if let Member::AfterKey(k) = m {
                        *m = Member::InValue(std::mem::take(k));
                    }
                }
                if i == at {
                    return render(&frames, None);
                }
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                // A number, a literal, or a stray byte: one run of the same class of bytes.
                let class_of_first: fn(u8) -> bool = if b.is_ascii_digit() || b == b'-' {
                    |c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')
                } else if b.is_ascii_alphabetic() {
                    |c| c.is_ascii_alphabetic()
                } else {
                    |_| false
                };
                let mut j = i + 1;
                while text.get(j).is_some_and(|&c| class_of_first(c)) {
                    j += 1;
                }
                value_starts(&mut frames);
                if at + 1 < j || (at + 1 == j && !ends.scalar) {
                    return render(&frames, None);
                }
                value_ends(&mut frames);
                if at + 1 == j {
                    return render(&frames, None);
                }
                i = j;
            }
        }
    }
    render(&frames, None)
}

/// The path of the field a `serde_json` error at `line`/`column` of `text` is about; empty for
/// the whole document or when the error has no position.
pub fn path_of_error(text: &[u8], error: &serde_json::Error) -> String {
    let Some(mut at) = byte_index(text, error.line(), error.column()) else {
        return String::new();
    };
    // A data error is reported after the last byte serde_json consumed. When the refused value
    // was only peeked at (an array or object where a scalar belongs), that byte is the `[`, `,`,
    // `:` or space before the value: the value is the next byte that is not a space.
    if error.classify() == serde_json::error::Category::Data
        && matches!(text.get(at), Some(b'[' | b',' | b':' | b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
        while matches!(text.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            at += 1;
        }
    }
    let message = error.to_string();
    // "expected value", "expected `,` or `}`", "trailing ...": about what follows, not the string
    // itself (unlike "invalid escape" and the like).
    let category = error.classify();
    let eof = category == serde_json::error::Category::Eof;
    let after_string =
        eof || (category == serde_json::error::Category::Syntax && (message.starts_with("expected") || message.starts_with("trailing")));
    path_at_index(text, at, message.starts_with("unknown field"), Ends { string: after_string, scalar: eof, container: eof })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str, at_marker: &str) -> String {
        let at = text.find(at_marker).unwrap();
        path_at_index(text.as_bytes(), at, true, Ends::default())
    }

    #[test]
    fn names_keys_values_and_containers() {
        let t = r#"{"rules": [{"deny": ["10.0.0.0/8", "BAD"]}, {"match": {"path_regex": "(" }}], "mode": "x"}"#;
        assert_eq!(path(t, "BAD\""), "rules[0].deny[1]");
        assert_eq!(path(t, "(\""), "rules[1].match.path_regex");
        assert_eq!(path(t, "x\"}"), "mode");
        assert_eq!(path(t, "deny\""), "rules[0].deny");
        // The closing brace of rules[1].match: its own path.
        assert_eq!(path(t, "}}]"), "rules[1].match");
        assert_eq!(path(t, "{\"rules"), "");
    }

    #[test]
    fn lines_and_columns_map_to_bytes() {
        let t = b"{\n  \"a\": [1,\n    2]\n}";
        // serde_json's 1-based column of the "2" on line 3.
        assert_eq!(byte_index(t, 3, 5), Some(t.iter().position(|&b| b == b'2').unwrap()));
        assert_eq!(path_at_index(t, byte_index(t, 3, 5).unwrap(), true, Ends::default()), "a[1]");
        assert_eq!(byte_index(t, 0, 0), None);
        assert_eq!(byte_index(t, 9, 1), None);
    }

    #[test]
    fn escaped_keys_and_truncated_text() {
        let t = r#"{"a\"b": {"c": 1"#;
        assert_eq!(path(t, "1"), "a\"b.c");
        // Past the end, after a finished value: the object holding it.
        assert_eq!(path_at_index(t.as_bytes(), t.len() + 10, true, Ends::default()), "a\"b");
        assert_eq!(path_at_index(br#"{"k\u00e9": 5}"#, 12, true, Ends::default()), "k\u{e9}");
        assert_eq!(path_at_index(b"", 0, true, Ends::default()), "");
    }
}
