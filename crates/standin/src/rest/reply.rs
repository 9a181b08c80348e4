//! The HTTP side of a request: query parameters, `Prefer` and `Accept` headers, and JSON
//! answers (with `Content-Range`, or one object for `application/vnd.pgrst.object+json`). Owns
//! no database access and never decides what a request may do.

use serde_json::Value;
use warp::http::{HeaderMap, StatusCode};
use warp::Reply;

use super::{Request, RestError};

pub(super) fn param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub(super) fn prefer(headers: &HeaderMap) -> String {
    headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",")
}

pub(super) fn wants_object(headers: &HeaderMap) -> bool {
    headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/vnd.pgrst.object+json"))
}

pub(super) fn single_object(array_text: &str) -> Result<warp::reply::Response, RestError> {
    let rows: Vec<Value> = serde_json::from_str(array_text).unwrap_or_default();
    if rows.len() != 1 {
        let mut e = RestError::new(
            StatusCode::NOT_ACCEPTABLE,
            "PGRST116",
            "JSON object requested, multiple (or no) rows returned",
        );
        e.details = Some(format!("The result contains {} rows", rows.len()));
        return Err(e);
    }
    Ok(json_response(rows[0].to_string(), StatusCode::OK, None))
}

pub(super) fn json_response(body: String, status: StatusCode, range: Option<String>) -> warp::reply::Response {
    let mut response = warp::reply::with_status(body, status).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", warp::http::HeaderValue::from_static("application/json; charset=utf-8"));
    if let Some(range) = range.and_then(|r| warp::http::HeaderValue::from_str(&r).ok()) {
        headers.insert("content-range", range);
    }
    response
}

pub(super) fn url_params(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                urlencoding::decode(&s.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_else(|_| s.to_string())
            };
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_params_decode_percent_and_plus() {
        let p = url_params(
            "select=id,sender:profiles(full_name)&created_at=gte.2024-01-01T00%3A00%3A00%2B00%3A00&title=eq.a+b&flag",
        );
        assert_eq!(p[0], ("select".into(), "id,sender:profiles(full_name)".into()));
        assert_eq!(p[1].1, "gte.2024-01-01T00:00:00+00:00");
        assert_eq!(p[2].1, "eq.a b");
        assert_eq!(p[3], ("flag".into(), String::new()));
    }
}
