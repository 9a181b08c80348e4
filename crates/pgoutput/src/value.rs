//! PostgreSQL's text output of a value → JSON, as Supabase Realtime converts it: integers and
//! floats as numbers, booleans, json/jsonb parsed, timestamps in ISO form, one-dimensional arrays
//! element by element. Anything that does not parse stays the string PostgreSQL wrote; never
//! fails, never panics.

use serde_json::{Number, Value};

/// Converts PostgreSQL's text output of a value of type `ty` to JSON as Realtime does.
pub fn to_json(ty: &str, text: &str) -> Value {
    match ty {
        "int2" | "int4" | "int8" | "oid" => {
            text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.into()))
        }
        "float4" | "float8" | "numeric" => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.into())),
        "bool" => Value::Bool(text == "t" || text == "true"),
        "json" | "jsonb" => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        "timestamptz" => Value::String(timestamptz(text)),
        "timestamp" => Value::String(text.replacen(' ', "T", 1)),
        array if array.starts_with('_') => match parse_array(text) {
            Some(items) => {
                Value::Array(items.into_iter().map(|i| i.map_or(Value::Null, |t| to_json(&array[1..], &t))).collect())
            }
            None => Value::String(text.into()),
        },
        _ => Value::String(text.into()),
    }
}

/// Elements of a one-dimensional PostgreSQL array literal (`{a,"b c",NULL}`); `None` for anything
/// else (nested arrays, explicit bounds, malformed input), which then stays a string.
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None;
                }
                item.push(c);
                chars.next();
            }
        }
        items.push(if !quoted && item == "NULL" { None } else { Some(item) });
        match chars.next() {
            None => return Some(items),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// `2026-01-01 12:00:00.123456+00` → `2026-01-01T12:00:00.123456+00:00`.
fn timestamptz(text: &str) -> String {
    let t = text.replacen(' ', "T", 1);
    if let Some(i) = t.get(10..).and_then(|tail| tail.rfind(['+', '-'])).map(|i| i + 10) {
        if t.len() - i == 3 {
            return format!("{t}:00");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_values() {
        assert_eq!(to_json("int8", "12"), Value::from(12));
        assert_eq!(to_json("bool", "t"), Value::Bool(true));
        assert_eq!(to_json("jsonb", r#"{"a":1}"#), serde_json::json!({"a":1}));
        assert_eq!(
            to_json("timestamptz", "2026-01-01 12:00:00.123456+00"),
            Value::from("2026-01-01T12:00:00.123456+00:00")
        );
        assert_eq!(to_json("timestamptz", "2026-01-01 12:00:00+05:30"), Value::from("2026-01-01T12:00:00+05:30"));
        assert_eq!(to_json("text", "hi"), Value::from("hi"));
        assert_eq!(to_json("timestamp", "2026-01-01 12:00:00.25"), Value::from("2026-01-01T12:00:00.25"));
        assert_eq!(to_json("numeric", "12.5"), serde_json::json!(12.5));
        assert_eq!(to_json("float8", "NaN"), Value::from("NaN"));
        assert_eq!(to_json("int4", "x"), Value::from("x"));
        assert_eq!(to_json("json", "[1,"), Value::from("[1,"));
        assert_eq!(to_json("_int4", "{1,NULL,3}"), serde_json::json!([1, null, 3]));
        assert_eq!(to_json("_text", r#"{a,"b,c","d\"e","NULL"}"#), serde_json::json!(["a", "b,c", "d\"e", "NULL"]));
        assert_eq!(to_json("_text", "{}"), serde_json::json!([]));
        assert_eq!(to_json("_int4", "{{1,2},{3,4}}"), Value::from("{{1,2},{3,4}}"));
        assert_eq!(to_json("_text", r#"{"open"#), Value::from(r#"{"open"#));
    }
}
