//! The four Bookinfo services, with the API and the behaviour of Istio's originals.
//!
//! Each service is an axum router; the ones that call others (productpage, reviews v2 and
//! v3) call them by plain service name (`http://reviews:9080/...`) through their
//! workload's `mesh.client()`, propagating `end-user` and the caller's credentials (the mesh
//! carries the request ID and the trace context by itself).
//! Timeouts are those of the originals — productpage gives reviews 3 s and tries twice,
//! reviews v2 gives ratings 10 s, v3 2.5 s — multiplied by a time scale so that tests can
//! run Istio's fault-injection tasks ten times faster with the same logic.

use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use mesh_tower::Mesh;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Headers the reviews service propagates to ratings: those of the original's
/// `headers_to_propagate` that are the application's business — the user agent, the
/// caller's identity (`end-user`, set by productpage), cookies and credentials. Unlike
/// Istio's Bookinfo, the services do not copy `x-request-id` or any tracing header: the
/// mesh continues the request a handler serves in the requests it sends through
/// `mesh.client()` by itself.
pub const PROPAGATED: &[&str] = &["user-agent", "cookie", "authorization", "jwt", "end-user"];

/// The headers productpage propagates: the same, except `end-user`, which productpage
/// sets itself from its login session and never takes from its client.
fn productpage_propagates(name: &str) -> bool {
    name != "end-user" && PROPAGATED.contains(&name)
}

/// The headers of `incoming` that `keep` accepts.
fn forwarded(incoming: &HeaderMap, keep: impl Fn(&str) -> bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        if keep(name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The heading productpage shows when details cannot be fetched (Istio's template).
pub const DETAILS_ERROR: &str = "Error fetching product details";
/// The heading productpage shows when reviews cannot be fetched (Istio's template).
pub const REVIEWS_ERROR: &str = "Error fetching product reviews";
/// The message productpage shows when reviews cannot be fetched.
pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
/// The message productpage shows when details cannot be fetched.
pub const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";
/// The message productpage's API answers when ratings cannot be fetched.
pub const PRODUCT_RATINGS_UNAVAILABLE: &str =
    "Sorry, product ratings are currently unavailable for this book.";
/// The error reviews reports when ratings cannot be fetched.
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

/// The one product of the store.
fn products() -> Value {
    json!([{
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play."
    }])
}

async fn health() -> Json {
    Json(json!({"status": "OK"}))
}

/// A JSON response.
pub struct Json(pub Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0.to_string(),
        )
            .into_response()
    }
}

fn bad_id() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "please provide numeric product ID"})),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// details

/// The details service: `/details/{id}`, `/health`.
pub fn details() -> Router {
    Router::new()
        .route("/details/{id}", get(details_of))
        .route("/health", get(health))
}

async fn details_of(Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad_id();
    };
    Json(json!({
        "id": id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890"
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// ratings

/// The ratings service: `/ratings/{id}`, `/health`.
pub fn ratings() -> Router {
    Router::new()
        .route("/ratings/{id}", get(ratings_of))
        .route("/health", get(health))
}

async fn ratings_of(Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad_id();
    };
    Json(json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})).into_response()
}

// ---------------------------------------------------------------------------------------
// calls through the mesh

/// Why a call to another service failed.
#[derive(Debug)]
pub enum CallError {
    /// It did not answer within the timeout.
    Timeout,
    /// It answered with an error status.
    Status(StatusCode),
    /// The call failed.
    Failed(String),
}

/// GET `url` through `mesh` with the headers `outgoing`, within `timeout`.
pub async fn call(
    mesh: &Mesh,
    url: &str,
    outgoing: &HeaderMap,
    timeout: Duration,
) -> Result<Value, CallError> {
    let mut b = http::Request::get(url);
    for (name, value) in outgoing {
        b = b.header(name, value.clone());
    }
    let req = b
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| CallError::Failed(e.to_string()))?;
    let attempt = async {
        let resp = mesh
            .client()
            .oneshot(req)
            .await
            .map_err(|e| CallError::Failed(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Failed(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(CallError::Status(status));
        }
        serde_json::from_slice(&body).map_err(|e| CallError::Failed(e.to_string()))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout),
    }
}

/// The shared state of a calling service.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The workload's mesh handle.
    pub mesh: Mesh,
    /// Multiplies the originals' timeouts (1.0 for the demo).
    pub time_scale: f64,
}

impl Caller {
    fn timeout(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.time_scale)
    }
}

// ---------------------------------------------------------------------------------------
// reviews

/// Which reviews: v1 without ratings, v2 black stars, v3 red stars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewsVersion {
    /// No ratings.
    V1,
    /// Black stars; gives ratings 10 s.
    V2,
    /// Red stars; gives ratings 2.5 s.
    V3,
}

#[derive(Clone, Debug)]
struct Reviews {
    caller: Caller,
    version: ReviewsVersion,
    podname: String,
}

/// The reviews service of `version`, named `podname` in its answers.
pub fn reviews(caller: Caller, version: ReviewsVersion, podname: &str) -> Router {
    Router::new()
        .route("/reviews/{id}", get(reviews_of))
        .route("/health", get(health))
        .with_state(Reviews {
            caller,
            version,
            podname: podname.to_string(),
        })
}

async fn reviews_of(
    State(s): State<Reviews>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(n) = id.parse::<i64>() else {
        return bad_id();
    };
    let texts = [
        (
            "Reviewer1",
            "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
        ),
        (
            "Reviewer2",
            "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
        ),
    ];
    let (color, timeout) = match s.version {
        ReviewsVersion::V1 => ("", 0.0),
        ReviewsVersion::V2 => ("black", 10.0),
        ReviewsVersion::V3 => ("red", 2.5),
    };
    let ratings = if s.version == ReviewsVersion::V1 {
        None
    } else {
        let url = format!("http://ratings:9080/ratings/{n}");
        let out = forwarded(&headers, |n| PROPAGATED.contains(&n));
        Some(call(&s.caller.mesh, &url, &out, s.caller.timeout(timeout)).await)
    };
    let reviews: Vec<Value> = texts
        .iter()
        .map(|(reviewer, text)| {
            let mut r = json!({"reviewer": reviewer, "text": text});
            match &ratings {
                None => {}
                Some(Ok(v)) => {
                    // As the original: a reviewer without a rating (-1) is shown as
                    // ratings being unavailable.
                    r["rating"] = match v["ratings"][reviewer].as_i64() {
                        Some(stars) if stars != -1 => json!({"stars": stars, "color": color}),
                        _ => json!({"error": RATINGS_UNAVAILABLE}),
                    };
                }
                Some(Err(_)) => r["rating"] = json!({"error": RATINGS_UNAVAILABLE}),
            }
            r
        })
        .collect();
    Json(json!({
        "id": id,
        "podname": s.podname,
        "clustername": "null",
        "reviews": reviews
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// productpage

/// The productpage service: the page, login and logout, and the JSON API.
pub fn productpage(caller: Caller) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/login", post(login))
        .route("/logout", get(logout))
        .route("/productpage", get(page))
        .route("/static/style.css", get(style))
        .route("/api/v1/products", get(|| async { Json(products()) }))
        .route("/api/v1/products/{id}", get(api_details))
        .route("/api/v1/products/{id}/reviews", get(api_reviews))
        .route("/api/v1/products/{id}/ratings", get(api_ratings))
        .with_state(caller)
}

const SESSION: &str = "session";

/// The user of the session cookie, if logged in.
fn user(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().find_map(|h| {
        h.to_str().ok()?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == SESSION && !v.is_empty()).then(|| v.to_string())
        })
    })
}

/// What productpage sends to the services it calls, as the original does: the
/// propagated headers of its request, and `end-user` from its login session only.
fn outgoing(headers: &HeaderMap) -> HeaderMap {
    let mut h = forwarded(headers, productpage_propagates);
    if let Some(u) = user(headers).and_then(|u| HeaderValue::from_str(&u).ok()) {
        h.insert("end-user", u);
    }
    h
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    #[serde(default)]
    #[allow(dead_code)]
    passwd: String,
}

/// Where to go after login or logout: back to the page the form was on (the
/// original redirects to the referrer), else the product page. Only a path on this
/// site is followed.
fn back(headers: &HeaderMap) -> String {
    let referer = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.parse::<http::Uri>().ok())
        .and_then(|u| u.path_and_query().map(|pq| pq.as_str().to_string()))
        .filter(|p| p.starts_with('/') && !p.starts_with("//"));
    referer.unwrap_or_else(|| "/productpage".into())
}

async fn login(headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let user: String = f
        .username
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let mut resp = found(&back(&headers));
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION}={user}; Path=/")) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// A 302 redirect, as the original (Flask) answers login and logout.
fn found(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::FOUND, [(header::LOCATION, "/productpage")]).into_response(),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    let mut resp = found(&back(&headers));
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("session=; Path=/; Max-Age=0"),
    );
    resp
}

async fn index() -> Html<String> {
    Html(format!(
        "<!DOCTYPE html><html><head><title>Simple Bookstore App</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><div class=\"container\"><h1>Simple Bookstore App</h1><p>Click on one of the links below to auto generate a request to the backend as a real user or a tester</p><p><a href=\"/productpage?u=normal\">Normal user</a></p><p><a href=\"/productpage?u=test\">Test user</a></p><h3>Microservices</h3><ul><li>productpage: this page</li><li>details: <code>/details/0</code></li><li>reviews: <code>/reviews/0</code> (v1, v2, v3)</li><li>ratings: <code>/ratings/0</code></li></ul><p>Products: <code>/api/v1/products</code></p>{}</div></body></html>",
        ""
    ))
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css")],
        "body{font-family:Helvetica,Arial,sans-serif;margin:0;background:#fff;color:#333}\n.navbar{background:#222;color:#ddd;padding:12px 24px}\n.navbar a,.navbar b{color:#ddd}\n.container{padding:0 24px}\n.col{display:inline-block;vertical-align:top;width:45%;margin-right:4%}\nblockquote{border-left:4px solid #ddd;margin:16px 0;padding:4px 16px}\n.stars{font-size:1.3em}\ndl dt{font-weight:bold}\n",
    )
        .into_response()
}

async fn api_details(
    State(c): State<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let url = format!("http://details:9080/details/{id}");
    match call(&c.mesh, &url, &outgoing(&headers), c.timeout(3.0)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => api_error(&e, DETAILS_UNAVAILABLE),
    }
}

/// Reviews as the original fetches them: 3 s per try, two tries.
async fn fetch_reviews(c: &Caller, id: &str, headers: &HeaderMap) -> Result<Value, CallError> {
    let url = format!("http://reviews:9080/reviews/{id}");
    let mut last = CallError::Failed("not tried".into());
    for _ in 0..2 {
        match call(&c.mesh, &url, headers, c.timeout(3.0)).await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn api_reviews(
    State(c): State<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match fetch_reviews(&c, &id, &outgoing(&headers)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => api_error(&e, REVIEWS_UNAVAILABLE),
    }
}

async fn api_ratings(
    State(c): State<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let url = format!("http://ratings:9080/ratings/{id}");
    match call(&c.mesh, &url, &outgoing(&headers), c.timeout(3.0)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => api_error(&e, PRODUCT_RATINGS_UNAVAILABLE),
    }
}

/// The API's answer when a call failed, as the original's: the upstream's status (500
/// when there was none) and an error message.
fn api_error(e: &CallError, message: &str) -> Response {
    let status = match e {
        CallError::Status(s) => *s,
        CallError::Timeout | CallError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "error": message }))).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(c): State<Caller>, headers: HeaderMap) -> Html<String> {
    let out = outgoing(&headers);
    // One after the other, as the original does.
    let details = call(
        &c.mesh,
        "http://details:9080/details/0",
        &out,
        c.timeout(3.0),
    )
    .await;
    let reviews = fetch_reviews(&c, "0", &out).await;
    let product = &products()[0];
    let user = user(&headers);
    let mut html = String::new();
    html.push_str("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>");
    html.push_str("<nav class=\"navbar\"><b>BookInfo Sample</b>");
    match &user {
        Some(u) => html.push_str(&format!(
            " &nbsp; <span>welcome <b id=\"user\">{}</b></span> &nbsp; <a href=\"/logout\">sign out</a>",
            escape(u)
        )),
        None => html.push_str(
            " &nbsp; <form method=\"post\" action=\"/login\" style=\"display:inline\"><input name=\"username\" placeholder=\"User Name\"> <input name=\"passwd\" type=\"password\" placeholder=\"Password\"> <button type=\"submit\">Sign in</button></form>",
        ),
    }
    html.push_str("</nav><div class=\"container\">");
    html.push_str(&format!(
        "<h1 class=\"title\">{}</h1><p>Summary: {}</p>",
        escape(product["title"].as_str().unwrap_or("")),
        product["descriptionHtml"].as_str().unwrap_or("")
    ));
    html.push_str("<div class=\"col\" id=\"details\"><h4>Book Details</h4>");
    match details {
        Ok(d) => {
            html.push_str("<dl>");
            for (label, key) in [
                ("Type", "type"),
                ("Pages", "pages"),
                ("Publisher", "publisher"),
                ("Language", "language"),
                ("ISBN-10", "ISBN-10"),
                ("ISBN-13", "ISBN-13"),
            ] {
                let v = match &d[key] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                html.push_str(&format!("<dt>{label}:</dt><dd>{}</dd>", escape(&v)));
            }
            html.push_str("</dl>");
        }
        Err(_) => html.push_str(&format!(
            "<p class=\"error\">{DETAILS_ERROR}</p><p><i>{DETAILS_UNAVAILABLE}</i></p>"
        )),
    }
    html.push_str("</div><div class=\"col\" id=\"reviews\"><h4>Book Reviews</h4>");
    match reviews {
        Ok(r) => {
            for rev in r["reviews"].as_array().into_iter().flatten() {
                html.push_str(&format!(
                    "<blockquote><p>{}</p><small>{}</small>",
                    escape(rev["text"].as_str().unwrap_or("")),
                    escape(rev["reviewer"].as_str().unwrap_or(""))
                ));
                let rating = &rev["rating"];
                if let Some(stars) = rating["stars"].as_i64() {
                    let color = rating["color"].as_str().unwrap_or("black");
                    let full = "★".repeat(stars.clamp(0, 5) as usize);
                    let empty = "☆".repeat((5 - stars.clamp(0, 5)) as usize);
                    html.push_str(&format!(
                        "<div class=\"stars\"><font color=\"{}\">{full}{empty}</font></div>",
                        escape(color)
                    ));
                } else if let Some(err) = rating["error"].as_str() {
                    html.push_str(&format!("<p><i>{}</i></p>", escape(err)));
                }
                html.push_str("</blockquote>");
            }
            html.push_str(&format!(
                "<p>Reviews served by: <u id=\"podname\">{}</u></p>",
                escape(r["podname"].as_str().unwrap_or(""))
            ));
        }
        Err(_) => html.push_str(&format!(
            "<p class=\"error\">{REVIEWS_ERROR}</p><p><i>{REVIEWS_UNAVAILABLE}</i></p>"
        )),
    }
    html.push_str("</div></div></body></html>");
    Html(html)
}
