//! Parsing of PostgREST's URL grammar: `select` lists with embedding, filters and ordering.
//!
//! Pure functions over strings with their own error type; nothing here touches the database or
//! builds SQL. Identifiers are returned as written and must be checked against the catalog by the
//! caller before they reach SQL.

/// One item of a `select=` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectItem {
    /// `*`
    Star,
    /// `col` or `alias:col`
    Column { name: String, alias: Option<String> },
    /// `alias:target(items)` or `target!hint(items)`
    Embed { target: String, alias: Option<String>, hint: Option<String>, items: Vec<SelectItem> },
}

/// A filter `col=op.value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub column: String,
    pub negated: bool,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Cmp(&'static str, String),
    Like { insensitive: bool, pattern: String },
    In(Vec<String>),
    Is(IsValue),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    Null,
    True,
    False,
    Unknown,
}

/// `col.asc|desc[.nullsfirst|.nullslast]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    pub column: String,
    pub descending: bool,
    pub nulls_first: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// Splits at commas that are not inside parentheses or double quotes.
fn split_top(input: &str) -> Result<Vec<&str>, ParseError> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    for (i, c) in input.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth < 0 {
                    return err("unbalanced parentheses");
                }
            }
            ',' if !quoted && depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return err("unbalanced parentheses or quotes");
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn ident(s: &str) -> Result<String, ParseError> {
    let s = s.trim();
    if s.is_empty() {
        return err("empty identifier");
    }
    if s.len() > 63 || !s.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return err(format!("unsupported identifier \"{s}\""));
    }
    Ok(s.to_string())
}

/// Parses a `select=` value.
pub fn parse_select(input: &str) -> Result<Vec<SelectItem>, ParseError> {
    let input = input.trim();
    if input.is_empty() {
        return Ok(vec![SelectItem::Star]);
    }
    let mut items = Vec::new();
    for part in split_top(input)? {
        let part = part.trim();
        if part == "*" {
            items.push(SelectItem::Star);
            continue;
        }
        let (alias, rest) = match part.find(':') {
            Some(i) if !part[..i].contains('(') && part.as_bytes().get(i + 1) != Some(&b':') => {
                (Some(ident(&part[..i])?), &part[i + 1..])
            }
            _ => (None, part),
        };
        if let Some(open) = rest.find('(') {
            if !rest.ends_with(')') {
                return err(format!("malformed embedding \"{part}\""));
            }
            let head = &rest[..open];
            let inner = &rest[open + 1..rest.len() - 1];
            let (target, hint) = match head.split_once('!') {
                Some((t, h)) => (ident(t)?, Some(ident(h)?)),
                None => (ident(head)?, None),
            };
            items.push(SelectItem::Embed { target, alias, hint, items: parse_select(inner)? });
        } else {
            // `col::type` casts are accepted and ignored.
            let name = rest.split("::").next().unwrap_or(rest);
            items.push(SelectItem::Column { name: ident(name)?, alias });
        }
    }
    Ok(items)
}

/// Parses the value of a filter parameter (`eq.5`, `not.in.(a,b)`, `is.null`, ...).
pub fn parse_filter(column: &str, value: &str) -> Result<Filter, ParseError> {
    let column = ident(column)?;
    let (negated, rest) = match value.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (op, operand) =
        rest.split_once('.').ok_or_else(|| ParseError(format!("\"{value}\" is not an operator expression")))?;
    let op = match op {
        "eq" => Op::Cmp("=", operand.into()),
        "neq" => Op::Cmp("<>", operand.into()),
        "gt" => Op::Cmp(">", operand.into()),
        "gte" => Op::Cmp(">=", operand.into()),
        "lt" => Op::Cmp("<", operand.into()),
        "lte" => Op::Cmp("<=", operand.into()),
        "like" => Op::Like { insensitive: false, pattern: operand.replace('*', "%") },
        "ilike" => Op::Like { insensitive: true, pattern: operand.replace('*', "%") },
        "in" => {
            let inner = operand
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| ParseError(format!("in. expects a list in parentheses, got \"{operand}\"")))?;
            let values = if inner.is_empty() {
                Vec::new()
            } else {
                split_top(inner)?.into_iter().map(|v| v.trim().trim_matches('"').to_string()).collect()
            };
            Op::In(values)
        }
        "is" => Op::Is(match operand.to_ascii_lowercase().as_str() {
            "null" => IsValue::Null,
            "true" => IsValue::True,
            "false" => IsValue::False,
            "unknown" => IsValue::Unknown,
            other => return err(format!("is. expects null, true, false or unknown, got \"{other}\"")),
        }),
        other => return err(format!("unknown operator \"{other}\"")),
    };
    Ok(Filter { column, negated, op })
}

/// Parses an `order=` value.
pub fn parse_order(input: &str) -> Result<Vec<OrderItem>, ParseError> {
    let mut items = Vec::new();
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut pieces = part.split('.');
        let column = ident(pieces.next().unwrap_or_default())?;
        let mut item = OrderItem { column, descending: false, nulls_first: None };
        for modifier in pieces {
            match modifier {
                "asc" => item.descending = false,
                "desc" => item.descending = true,
                "nullsfirst" => item.nulls_first = Some(true),
                "nullslast" => item.nulls_first = Some(false),
                other => return err(format!("unknown order modifier \"{other}\"")),
            }
        }
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_with_embedding() {
        let items = parse_select(
            "id, content,sender:profiles(full_name,role), thread:threads!messages_thread_id_fkey(id,title)",
        )
        .expect("ok");
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], SelectItem::Column { name: "id".into(), alias: None });
        assert_eq!(
            items[2],
            SelectItem::Embed {
                target: "profiles".into(),
                alias: Some("sender".into()),
                hint: None,
                items: vec![
                    SelectItem::Column { name: "full_name".into(), alias: None },
                    SelectItem::Column { name: "role".into(), alias: None }
                ]
            }
        );
        assert!(matches!(&items[3], SelectItem::Embed { hint: Some(h), .. } if h == "messages_thread_id_fkey"));
        assert_eq!(
            parse_select("*, x:y").expect("ok")[1],
            SelectItem::Column { name: "y".into(), alias: Some("x".into()) }
        );
        assert_eq!(parse_select("").expect("ok"), vec![SelectItem::Star]);
        assert!(parse_select("a,(b").is_err());
        assert!(parse_select("a;drop table x").is_err());
    }

    #[test]
    fn filters() {
        assert_eq!(parse_filter("id", "eq.5").expect("ok").op, Op::Cmp("=", "5".into()));
        let f = parse_filter("id", "not.in.(a,\"b,c\")").expect("ok");
        assert!(f.negated);
        assert_eq!(f.op, Op::In(vec!["a".into(), "b,c".into()]));
        assert_eq!(parse_filter("x", "is.null").expect("ok").op, Op::Is(IsValue::Null));
        assert_eq!(
            parse_filter("x", "ilike.*ab*").expect("ok").op,
            Op::Like { insensitive: true, pattern: "%ab%".into() }
        );
        assert_eq!(
            parse_filter("t", "gte.2024-01-01T00:00:00+00:00").expect("ok").op,
            Op::Cmp(">=", "2024-01-01T00:00:00+00:00".into())
        );
        assert!(parse_filter("x", "foo.1").is_err());
        assert!(parse_filter("x", "novalue").is_err());
        assert!(parse_filter("bad col", "eq.1").is_err());
    }

    #[test]
    fn order() {
        let o = parse_order("created_at.desc.nullslast,id").expect("ok");
        assert_eq!(o[0], OrderItem { column: "created_at".into(), descending: true, nulls_first: Some(false) });
        assert_eq!(o[1], OrderItem { column: "id".into(), descending: false, nulls_first: None });
        assert!(parse_order("a.sideways").is_err());
    }
}
