//! Paged HTTP APIs: [`HttpSource`] pulls one page per request from a REST, OData or JSON-RPC
//! endpoint described by [`HttpStreamSettings`] and yields each page as one [`Batch`].
//!
//! A page is requested with the static query parameters and body template of the stream, the
//! [`Paging`] parameters of its position and, when [`Incremental`], the filter built from the
//! stored cursor. [`Paging`] decides from each response whether another page follows; the last
//! page of a run carries [`Checkpoint::Cursor`] with the largest cursor seen (never smaller
//! than the stored one), every other page [`Checkpoint::None`], so a crash mid-stream re-reads
//! from the old cursor. Placeholders `{cursor}`, `{offset}`, `{limit}` and `{page}` are filled
//! in query values and in every string of the body template; values always go through
//! reqwest's encoders, never spliced into the URL by hand. A paging or filter parameter with an
//! empty name is not sent: JSON-RPC APIs take those values in the body template instead.
//!
//! Requests are paced to [`HttpStreamSettings::requests_per_second`] and retried with jittered
//! exponential backoff on connect errors, timeouts, 5xx and 429 (waiting at least as long as
//! `Retry-After` asks) until [`HttpStreamSettings::retry_max_elapsed`] is spent; other 4xx fail
//! at once. An [`Auth::OAuth2ClientCredentials`] token is cached until shortly before it expires
//! and refreshed once when the API answers 401.
//!
//! Next links are requested as given: they carry their own query, so the static parameters and
//! the filter are not added again (an API key in the query is, when the link lacks it). A JSON
//! records path missing from a body means the page has no records. XML records keep the line
//! numbers of the response body in their origins.
//!
//! Invariants: credentials are sent only to the origin of the configured base URL and of the
//! token URL (a next link elsewhere is an error; redirects are followed only within the origin
//! of the request) and never appear in errors (URLs are shown without user info and with
//! API-key query values masked); no response body is buffered beyond
//! [`HttpStreamSettings::max_response_bytes`], counted after decompression.

use std::io::Cursor;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LINK, RETRY_AFTER};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use serde_json::Value;

use super::xml::parse_xml_records;
use super::{Batch, Checkpoint, Origin, RawItem, RawRecord, Source, SourceError};

/// The default of [`HttpStreamSettings::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Longest excerpt of a response body quoted in an error, in characters.
const EXCERPT_CHARS: usize = 500;
/// A cached OAuth2 token is dropped this long before the server says it expires, so a request
/// never leaves with a token that dies in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(30);
const MASK: &str = "***";
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Xml,
}

/// How the pages of a stream follow each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paging {
    /// One request is the whole stream.
    None,
    /// `param` counts pages from `start`; the stream ends on an empty page.
    PageNumber {
        param: String,
        start: u64,
        size_param: Option<String>,
        size: u64,
    },
    /// The stream ends on a page shorter than `limit`.
    OffsetLimit {
        offset_param: String,
        limit_param: String,
        limit: u64,
    },
    /// The token at dotted path `next` of each body is sent as `param` for the next page; the
    /// stream ends when it is absent, null or empty.
    Cursor { param: String, next: String },
    /// The URL at dotted path `next` (`d.__next`, `@odata.nextLink`), absolute or relative to
    /// the request URL, is the next page.
    NextLink { next: String },
    /// The `rel="next"` target of the RFC 8288 `Link` header is the next page.
    LinkHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyLocation {
    Header,
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    ApiKey {
        name: String,
        value: String,
        location: ApiKeyLocation,
    },
    /// The token is requested with a form POST carrying `grant_type=client_credentials`, the
    /// client id and secret and, when set, the scope.
    OAuth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

/// Incremental reads: only records changed after the stored cursor are requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremental {
    /// Record fields (dotted paths) whose values, concatenated, form a record's cursor; cursors
    /// compare as strings, so two fields such as a date and a time order correctly.
    pub fields: Vec<String>,
    /// Query parameter that carries the filter, e.g. `$filter`.
    pub param: String,
    /// The filter, with `{cursor}` standing for the stored cursor.
    pub template: String,
    /// Cursor of the first run; `None` sends no filter until a cursor is stored.
    pub initial: Option<String>,
    /// Makes the cursor an instant: each record's cursor fields are read as a date-time
    /// (ISO 8601, SAP `/Date(ms)/`, Odoo `YYYY-MM-DD HH:MM:SS`; a second field may add a time
    /// of day, SAP `PT14H04M56S` or `14:04:56`), the stored cursor is RFC 3339 UTC, and
    /// `{cursor}` is written with this strftime format in UTC (e.g. `%Y-%m-%dT%H:%M:%S`).
    pub format: Option<String>,
    /// With `format`: the filter asks for changes since the cursor minus this, so records
    /// that arrive late with an older stamp are still read (unchanged ones publish nothing).
    pub lookback: Option<Duration>,
}

impl Incremental {
    fn instant(&self) -> bool {
        self.format.is_some() || self.lookback.is_some()
    }
}

/// The certificates of a PEM bundle; an error names the file.
fn read_ca_bundle(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, SourceError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|error| {
        SourceError::Config(format!("cannot read the CA bundle {shown}: {error}"))
    })?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
        SourceError::Config(format!("the CA bundle {shown} is not PEM: {error}"))
    })?;
    if certificates.is_empty() {
        return Err(SourceError::Config(format!(
            "the CA bundle {shown} holds no certificate"
        )));
    }
    Ok(certificates)
}

/// Everything one HTTP stream needs; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpStreamSettings {
    pub base_url: String,
    pub path: String,
    pub method: HttpMethod,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    pub format: BodyFormat,
    /// JSON: dotted path to the record array (`None`: the body is the array). XML: slash path
    /// of the record elements from the root inclusive; required.
    pub records: Option<String>,
    pub paging: Paging,
    pub auth: Auth,
    pub incremental: Option<Incremental>,
    /// Dotted path of an error member that makes a 200 response a failure (Odoo's `error`).
    pub error_path: Option<String>,
    pub retry_max_elapsed: Duration,
    pub requests_per_second: Option<f64>,
    pub max_response_bytes: u64,
    pub timeout: Duration,
    /// A PEM bundle of CA certificates trusted in addition to the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Where the next request of the stream goes.
#[derive(Debug, Clone, PartialEq)]
enum Position {
    /// Built from the configured URL, query and body. `page` counts from 0 and `offset` is the
    /// number of records the stream has yielded before it.
    Templated {
        page: u64,
        offset: u64,
        token: Option<String>,
    },
    /// A next link given by the server, used as is.
    Link(Url),
}

struct CachedToken {
    value: String,
    valid_until: Option<Instant>,
}

/// What one page request sends besides the configured headers and credentials.
struct PageRequest {
    url: Url,
    query: Vec<(String, String)>,
    body: Option<Value>,
}

/// A response that arrived with a success status, its body read completely.
struct Fetched {
    url: Url,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why one attempt failed, and whether another may succeed.
enum Failure {
    Retry {
        error: SourceError,
        retry_after: Option<Duration>,
    },
    Fatal(SourceError),
}

/// Reads one HTTP stream page by page; see the module documentation.
pub struct HttpSource {
    settings: HttpStreamSettings,
    client: Client,
    url: Url,
    location: String,
    /// The cursor the filter is built from: the stored one, else the configured initial one.
    cursor: Option<String>,
    /// Largest cursor seen so far in this run, starting from `cursor`.
    max_cursor: Option<String>,
    next: Option<Position>,
    pages: u64,
    token: Option<CachedToken>,
    last_request: Option<Instant>,
}

impl HttpSource {
    /// Checks the settings and prepares the client; no request is sent yet. `cursor` is the
    /// stored cursor of an incremental stream, `location` names the stream in origins.
    pub fn new(
        settings: HttpStreamSettings,
        cursor: Option<String>,
        location: &str,
    ) -> Result<HttpSource, SourceError> {
        let url = endpoint_url(&settings.base_url, &settings.path)?;
        check_settings(&settings)?;
        let mut builder = Client::builder()
            .timeout(settings.timeout)
            .redirect(same_origin_redirects());
        if let Some(ca_file) = &settings.ca_file {
            builder = builder.tls_certs_merge(read_ca_bundle(ca_file)?);
        }
        let client = builder.build().map_err(|error| {
            SourceError::Config(format!("cannot build the HTTP client: {error}"))
        })?;
        let cursor = match &settings.incremental {
            Some(incremental) => match cursor.or_else(|| incremental.initial.clone()) {
                Some(text) if incremental.instant() => Some(
                    parse_instant(&text, None)
                        .ok_or_else(|| {
                            SourceError::Config(format!(
                                "{location}: the cursor {text:?} is not a date-time"
                            ))
                        })?
                        .to_string(),
                ),
                other => other,
            },
            None => None,
        };
        Ok(HttpSource {
            client,
            url,
            location: location.to_string(),
            max_cursor: cursor.clone(),
            cursor,
            next: Some(Position::Templated {
                page: 0,
                offset: 0,
                token: None,
            }),
            pages: 0,
            token: None,
            last_request: None,
            settings,
        })
    }

    /// The page at `position`, requested once more with a fresh OAuth2 token if the API
    /// answers 401 to the cached one.
    async fn fetch_page(&mut self, position: &Position) -> Result<Fetched, SourceError> {
        let bearer = self.oauth_token().await?;
        let fetched = self.fetch_page_with(position, bearer.clone()).await;
        match fetched {
            Err(SourceError::Http {
                status: Some(401), ..
            }) if bearer.is_some() => {
                self.token = None;
                let bearer = self.oauth_token().await?;
                self.fetch_page_with(position, bearer).await
            }
            other => other,
        }
    }

    async fn fetch_page_with(
        &mut self,
        position: &Position,
        bearer: Option<String>,
    ) -> Result<Fetched, SourceError> {
        let PageRequest { url, query, body } = self.page_request(position);
        let method = match self.settings.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
        };
        let auth = self.settings.auth.clone();
        let mut headers = self.settings.headers.clone();
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("accept"))
        {
            // SAP OData answers in Atom XML unless asked for JSON.
            let accept = match self.settings.format {
                BodyFormat::Json => "application/json",
                BodyFormat::Xml => "application/xml, text/xml",
            };
            headers.push(("Accept".to_string(), accept.to_string()));
        }
        let build = move |client: &Client| {
            let mut request = client.request(method.clone(), url.clone()).query(&query);
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            request = match &auth {
                Auth::None | Auth::OAuth2ClientCredentials { .. } => request,
                Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
                Auth::Bearer { token } => request.bearer_auth(token),
                Auth::ApiKey {
                    name,
                    value,
                    location: ApiKeyLocation::Header,
                } => request.header(name, value),
                // Added to `query` by `page_request`, where duplicates in next links are seen.
                Auth::ApiKey {
                    location: ApiKeyLocation::Query,
                    ..
                } => request,
            };
            if let Some(token) = &bearer {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            request
        };
        self.execute(build).await
    }

    /// The URL, query pairs and body of the request for `position`.
    fn page_request(&self, position: &Position) -> PageRequest {
        let settings = &self.settings;
        let (page, offset, token) = match position {
            Position::Templated {
                page,
                offset,
                token,
            } => (*page, *offset, token.as_deref()),
            Position::Link(_) => (self.pages.saturating_sub(1), 0, None),
        };
        let (page_number, offset, limit) = match &settings.paging {
            Paging::PageNumber { start, size, .. } => (start + page, page * size, Some(*size)),
            Paging::OffsetLimit { limit, .. } => (page + 1, offset, Some(*limit)),
            _ => (page + 1, offset, None),
        };
        let filter_cursor = self.filter_cursor();
        let vars = Vars {
            cursor: filter_cursor.clone().unwrap_or_default(),
            offset,
            limit,
            page: page_number,
        };
        let mut query = Vec::new();
        let url = match position {
            Position::Link(url) => url.clone(),
            Position::Templated { .. } => {
                for (name, value) in &settings.query {
                    query.push((name.clone(), vars.fill(value)));
                }
                if let (Some(incremental), Some(cursor)) = (&settings.incremental, &filter_cursor) {
                    let filter = incremental.template.replace("{cursor}", cursor);
                    query.push((incremental.param.clone(), filter));
                }
                match &settings.paging {
                    Paging::PageNumber {
                        param, size_param, ..
                    } => {
                        query.push((param.clone(), page_number.to_string()));
                        if let (Some(size_param), Some(size)) = (size_param, limit) {
                            query.push((size_param.clone(), size.to_string()));
                        }
                    }
                    Paging::OffsetLimit {
                        offset_param,
                        limit_param,
                        limit,
                    } => {
                        query.push((offset_param.clone(), offset.to_string()));
                        query.push((limit_param.clone(), limit.to_string()));
                    }
                    Paging::Cursor { param, .. } => {
                        if let Some(token) = token {
                            query.push((param.clone(), token.to_string()));
                        }
                    }
                    Paging::None | Paging::NextLink { .. } | Paging::LinkHeader => {}
                }
                query.retain(|(name, _)| !name.is_empty());
                self.url.clone()
            }
        };
        if let Auth::ApiKey {
            name,
            value,
            location: ApiKeyLocation::Query,
        } = &settings.auth
            && !url.query_pairs().any(|(key, _)| key == name.as_str())
        {
            query.push((name.clone(), value.clone()));
        }
        let body = settings.body.as_ref().map(|body| vars.fill_json(body));
        PageRequest { url, query, body }
    }

    /// The OAuth2 bearer token, from the cache or the token endpoint; `None` for other auth.
    async fn oauth_token(&mut self) -> Result<Option<String>, SourceError> {
        let Auth::OAuth2ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
        } = self.settings.auth.clone()
        else {
            return Ok(None);
        };
        if let Some(token) = &self.token
            && token.valid_until.is_none_or(|until| Instant::now() < until)
        {
            return Ok(Some(token.value.clone()));
        }
        let url = Url::parse(&token_url).map_err(|error| {
            SourceError::Config(format!("token URL {token_url:?} is invalid: {error}"))
        })?;
        let mut form = vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("client_id".to_string(), client_id),
            ("client_secret".to_string(), client_secret),
        ];
        if let Some(scope) = scope {
            form.push(("scope".to_string(), scope));
        }
        let requested_at = Instant::now();
        let fetched = self
            .execute(move |client: &Client| client.post(url.clone()).form(&form))
            .await?;
        let shown = self.display_url(&fetched.url);
        let reply: Value =
            serde_json::from_slice(&fetched.body).map_err(|error| SourceError::Http {
                url: shown.clone(),
                status: Some(fetched.status),
                message: format!("the token response is not JSON: {error}"),
            })?;
        let Some(value) = reply.get("access_token").and_then(Value::as_str) else {
            return Err(SourceError::Http {
                url: shown,
                status: Some(fetched.status),
                message: "the token response has no access_token".to_string(),
            });
        };
        let valid_until = reply.get("expires_in").and_then(seconds).map(|lifetime| {
            requested_at + Duration::from_secs(lifetime).saturating_sub(TOKEN_EXPIRY_MARGIN)
        });
        self.token = Some(CachedToken {
            value: value.to_string(),
            valid_until,
        });
        Ok(Some(value.to_string()))
    }

    /// Sends the request `build` makes until it succeeds, fails for good or the retry budget
    /// is spent; see the module documentation.
    async fn execute(
        &mut self,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Fetched, SourceError> {
        let budget = self.settings.retry_max_elapsed;
        // The first wait is a small share of the budget so several attempts fit in it.
        let first_delay = (budget / 64).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let mut delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(first_delay)
            .with_max_delay((budget / 4).max(first_delay))
            .without_max_times()
            .build();
        let started = Instant::now();
        loop {
            self.pace().await;
            let failure = match self.attempt(&build).await {
                Ok(fetched) => return Ok(fetched),
                Err(failure) => failure,
            };
            let (error, retry_after) = match failure {
                Failure::Fatal(error) => return Err(error),
                Failure::Retry { error, retry_after } => (error, retry_after),
            };
            let backoff = delays.next().unwrap_or(first_delay);
            let delay = retry_after.map_or(backoff, |asked| asked.max(backoff));
            if started.elapsed() + delay > budget {
                return Err(exhausted(error, budget));
            }
            let status = match &error {
                SourceError::Http { status, .. } => *status,
                _ => None,
            };
            crate::metrics::http_retry(status);
            tracing::warn!(
                error = %error,
                delay_ms = delay.as_millis() as u64,
                "Request failed; retrying."
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &mut self,
        build: &impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Fetched, Failure> {
        let request = build(&self.client).build().map_err(|error| {
            Failure::Fatal(SourceError::Config(format!(
                "invalid request: {}",
                describe_transport(&error)
            )))
        })?;
        let url = request.url().clone();
        let shown = self.display_url(&url);
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(error) => {
                let failure = SourceError::Http {
                    url: shown,
                    status: None,
                    message: describe_transport(&error),
                };
                return Err(if error.is_builder() || error.is_redirect() {
                    Failure::Fatal(failure)
                } else {
                    Failure::Retry {
                        error: failure,
                        retry_after: None,
                    }
                });
            }
        };
        let status = response.status();
        if status.is_success() {
            let headers = response.headers().clone();
            // Relative next links resolve against where the page came from after redirects.
            let url = response.url().clone();
            let body = self.read_body(response, &shown).await?;
            return Ok(Fetched {
                url,
                status: status.as_u16(),
                headers,
                body,
            });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let excerpt = read_excerpt(response).await;
        let error = SourceError::Http {
            url: shown,
            status: Some(status.as_u16()),
            message: excerpt,
        };
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(Failure::Retry { error, retry_after })
        } else {
            Err(Failure::Fatal(error))
        }
    }

    /// The whole body, refused as soon as it grows past the size limit.
    async fn read_body(&self, mut response: Response, shown: &str) -> Result<Vec<u8>, Failure> {
        let limit = self.settings.max_response_bytes;
        let status = response.status().as_u16();
        let too_large = || {
            Failure::Fatal(SourceError::Http {
                url: shown.to_string(),
                status: Some(status),
                message: format!("the response is larger than the limit of {limit} bytes"),
            })
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(error) => {
                    return Err(Failure::Retry {
                        error: SourceError::Http {
                            url: shown.to_string(),
                            status: None,
                            message: format!(
                                "reading the response failed: {}",
                                describe_transport(&error)
                            ),
                        },
                        retry_after: None,
                    });
                }
            }
        }
    }

    /// Waits until the configured request rate allows the next request.
    async fn pace(&mut self) {
        if let (Some(rate), Some(last)) = (self.settings.requests_per_second, self.last_request) {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let due = last + interval;
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        self.last_request = Some(Instant::now());
    }

    /// `url` as it may appear in errors and logs: no user info, API-key query values masked.
    fn display_url(&self, url: &Url) -> String {
        let mut shown = url.clone();
        // Both only fail for URLs that cannot carry user info, which then have none to hide.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        if let Auth::ApiKey {
            name,
            location: ApiKeyLocation::Query,
            ..
        } = &self.settings.auth
            && url.query_pairs().any(|(key, _)| key == name.as_str())
        {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key == name.as_str() {
                        MASK.to_string()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        shown.to_string()
    }

    /// The items of one page: XML records, or the JSON records taken out of `document`.
    fn page_items(
        &self,
        fetched: &Fetched,
        document: Option<&mut Value>,
        label: &str,
    ) -> Result<Vec<RawItem>, SourceError> {
        let shown = || self.display_url(&fetched.url);
        let Some(document) = document else {
            let path = self.settings.records.as_deref().unwrap_or_default();
            return parse_xml_records(Cursor::new(fetched.body.as_slice()), path, label)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| SourceError::Http {
                    url: shown(),
                    status: Some(fetched.status),
                    message: format!("reading the XML body failed: {error}"),
                });
        };
        let records = match self.settings.records.as_deref() {
            None => Some(document),
            Some(path) => lookup_mut(document, path),
        };
        let elements = match records {
            None | Some(Value::Null) => return Ok(Vec::new()),
            // Taken, not cloned: a page can be tens of megabytes.
            Some(Value::Array(elements)) => std::mem::take(elements),
            Some(other) => {
                return Err(SourceError::Http {
                    url: shown(),
                    status: Some(fetched.status),
                    message: format!(
                        "expected an array of records at {:?}, found {}",
                        self.settings.records.as_deref().unwrap_or(""),
                        kind(other)
                    ),
                });
            }
        };
        Ok(elements
            .into_iter()
            .enumerate()
            .map(|(index, value)| {
                RawItem::Record(RawRecord {
                    value,
                    origin: Origin {
                        location: label.to_string(),
                        line: None,
                        index: index as u64,
                    },
                })
            })
            .collect())
    }

    /// The JSON body, or the application error it reports at the error path.
    fn json_body(&self, fetched: &Fetched) -> Result<Value, SourceError> {
        let shown = || self.display_url(&fetched.url);
        let document: Value =
            serde_json::from_slice(&fetched.body).map_err(|error| SourceError::Http {
                url: shown(),
                status: Some(fetched.status),
                message: format!(
                    "the response is not valid JSON ({error}): {}",
                    excerpt(&fetched.body)
                ),
            })?;
        if let Some(path) = &self.settings.error_path
            && let Some(error) = lookup(&document, path).filter(|error| !error.is_null())
        {
            return Err(SourceError::Http {
                url: shown(),
                status: Some(fetched.status),
                message: format!(
                    "the response reports an error: {}",
                    application_message(error)
                ),
            });
        }
        Ok(document)
    }

    /// Where the page after `fetched` is, or `None` when `fetched` ends the stream. `document`
    /// is the parsed JSON body, its records already taken out.
    fn next_position(
        &self,
        position: &Position,
        fetched: &Fetched,
        document: Option<&Value>,
        items: usize,
    ) -> Result<Option<Position>, SourceError> {
        let (page, offset, token) = match position {
            Position::Templated {
                page,
                offset,
                token,
            } => (*page, *offset, token.clone()),
            Position::Link(_) => (0, 0, None),
        };
        let advanced = Position::Templated {
            page: page + 1,
            offset: offset + items as u64,
            token: None,
        };
        let shown = || self.display_url(&fetched.url);
        Ok(match &self.settings.paging {
            Paging::None => None,
            Paging::PageNumber { .. } => (items > 0).then_some(advanced),
            Paging::OffsetLimit { limit, .. } => ((items as u64) >= *limit).then_some(advanced),
            Paging::Cursor { next, .. } => {
                let next_token = match document.and_then(|document| lookup(document, next)) {
                    Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
                    Some(Value::Number(number)) => Some(number.to_string()),
                    _ => None,
                };
                match next_token {
                    None => None,
                    Some(next_token) if Some(&next_token) == token.as_ref() => {
                        return Err(SourceError::Http {
                            url: shown(),
                            status: Some(fetched.status),
                            message: format!(
                                "the next cursor {next_token:?} repeats the current one; \
                                 paging would never end"
                            ),
                        });
                    }
                    Some(next_token) => Some(Position::Templated {
                        page: page + 1,
                        offset: offset + items as u64,
                        token: Some(next_token),
                    }),
                }
            }
            Paging::NextLink { next } => {
                match document.and_then(|document| lookup(document, next)) {
                    Some(Value::String(link)) if !link.is_empty() => {
                        Some(Position::Link(self.follow(fetched, link)?))
                    }
                    _ => None,
                }
            }
            Paging::LinkHeader => match next_link_header(&fetched.headers) {
                Some(link) => Some(Position::Link(self.follow(fetched, &link)?)),
                None => None,
            },
        })
    }

    /// Resolves a next link against the URL that returned it and checks it stays on the
    /// configured origin, so credentials never leave for another host.
    fn follow(&self, fetched: &Fetched, link: &str) -> Result<Url, SourceError> {
        let current = &fetched.url;
        let shown = || self.display_url(current);
        let next = current.join(link).map_err(|error| SourceError::Http {
            url: shown(),
            status: Some(fetched.status),
            message: format!("the next link {link:?} is not a valid URL: {error}"),
        })?;
        if next.origin() != self.url.origin() {
            return Err(SourceError::Http {
                url: shown(),
                status: Some(fetched.status),
                message: format!(
                    "the next link points to {}, outside {}; it is not followed",
                    next.origin().ascii_serialization(),
                    self.url.origin().ascii_serialization()
                ),
            });
        }
        if &next == current {
            return Err(SourceError::Http {
                url: shown(),
                status: Some(fetched.status),
                message: "the next link repeats the current URL; paging would never end"
                    .to_string(),
            });
        }
        Ok(next)
    }

    /// The cursor as the filter writes it: the stored one, or for instant cursors that
    /// instant minus the lookback in the configured format.
    fn filter_cursor(&self) -> Option<String> {
        let incremental = self.settings.incremental.as_ref()?;
        let cursor = self.cursor.as_ref()?;
        if !incremental.instant() {
            return Some(cursor.clone());
        }
        let instant = cursor.parse::<jiff::Timestamp>().ok()?;
        let since = match incremental.lookback {
            Some(lookback) => jiff::SignedDuration::try_from(lookback)
                .ok()
                .and_then(|back| instant.checked_sub(back).ok())
                .unwrap_or(instant),
            None => instant,
        };
        let format = incremental
            .format
            .as_deref()
            .unwrap_or("%Y-%m-%dT%H:%M:%SZ");
        jiff::fmt::strtime::format(format, &since.to_zoned(jiff::tz::TimeZone::UTC)).ok()
    }

    /// Raises the run's cursor to the largest cursor among `items`.
    fn track_cursor(&mut self, items: &[RawItem]) {
        let Some(incremental) = &self.settings.incremental else {
            return;
        };
        for item in items {
            let RawItem::Record(record) = item else {
                continue;
            };
            if incremental.instant() {
                let Some(instant) = record_instant(&record.value, &incremental.fields) else {
                    continue;
                };
                let later = match &self.max_cursor {
                    None => true,
                    Some(max) => max
                        .parse::<jiff::Timestamp>()
                        .is_ok_and(|max| instant > max),
                };
                if later {
                    self.max_cursor = Some(instant.to_string());
                }
                continue;
            }
            let Some(cursor) = record_cursor(&record.value, &incremental.fields) else {
                continue;
            };
            if self.max_cursor.as_ref().is_none_or(|max| cursor > *max) {
                self.max_cursor = Some(cursor);
            }
        }
    }
}

#[async_trait]
impl Source for HttpSource {
    async fn next_batch(&mut self) -> Result<Option<Batch>, SourceError> {
        let Some(position) = self.next.take() else {
            return Ok(None);
        };
        self.pages += 1;
        let label = format!("{} page {}", self.location, self.pages);
        let fetched = self.fetch_page(&position).await?;
        let mut document = match self.settings.format {
            BodyFormat::Json => Some(self.json_body(&fetched)?),
            BodyFormat::Xml => None,
        };
        let items = self.page_items(&fetched, document.as_mut(), &label)?;
        self.track_cursor(&items);
        self.next = self.next_position(&position, &fetched, document.as_ref(), items.len())?;
        let checkpoint = match (&self.next, &self.settings.incremental, &self.max_cursor) {
            (None, Some(_), Some(cursor)) => Checkpoint::Cursor(cursor.clone()),
            _ => Checkpoint::None,
        };
        if items.is_empty() && self.next.is_none() && checkpoint == Checkpoint::None {
            return Ok(None);
        }
        Ok(Some(Batch { items, checkpoint }))
    }
}

/// The values placeholders stand for in one request.
struct Vars {
    cursor: String,
    offset: u64,
    limit: Option<u64>,
    page: u64,
}

impl Vars {
    fn value(&self, name: &str) -> Option<String> {
        match name {
            "cursor" => Some(self.cursor.clone()),
            "offset" => Some(self.offset.to_string()),
            "limit" => Some(
                self.limit
                    .map(|limit| limit.to_string())
                    .unwrap_or_default(),
            ),
            "page" => Some(self.page.to_string()),
            _ => None,
        }
    }

    /// `template` with every known placeholder replaced in one pass, so a cursor that happens
    /// to contain `{page}` is sent as it is.
    fn fill(&self, template: &str) -> String {
        let mut filled = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            filled.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after
                .find('}')
                .and_then(|close| Some((close, self.value(&after[..close])?)))
            {
                Some((close, value)) => {
                    filled.push_str(&value);
                    rest = &after[close + 1..];
                }
                None => {
                    filled.push('{');
                    rest = after;
                }
            }
        }
        filled.push_str(rest);
        filled
    }

    /// The body template with placeholders filled in every string. A string that is exactly
    /// `{offset}`, `{limit}` or `{page}` becomes a number, as JSON-RPC APIs expect.
    fn fill_json(&self, template: &Value) -> Value {
        match template {
            Value::String(text) => {
                let number = match text.as_str() {
                    "{offset}" => Some(self.offset),
                    "{limit}" => self.limit,
                    "{page}" => Some(self.page),
                    _ => None,
                };
                match number {
                    Some(number) => Value::from(number),
                    None => Value::String(self.fill(text)),
                }
            }
            Value::Array(elements) => {
                Value::Array(elements.iter().map(|value| self.fill_json(value)).collect())
            }
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(key, value)| (key.clone(), self.fill_json(value)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Follows redirects only within the origin the request went to: an API-key header would
/// otherwise travel to whatever host a redirect names.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let leaves = attempt
            .previous()
            .last()
            .is_some_and(|previous| previous.origin() != attempt.url().origin());
        if leaves {
            let target = attempt.url().origin().ascii_serialization();
            attempt.error(format!("a redirect to {target} is not followed"))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

fn endpoint_url(base_url: &str, path: &str) -> Result<Url, SourceError> {
    let joined = if path.is_empty() {
        base_url.to_string()
    } else {
        format!(
            "{}/{}",
            base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    };
    let url = Url::parse(&joined)
        .map_err(|error| SourceError::Config(format!("URL {joined:?} is invalid: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SourceError::Config(format!(
            "URL {joined:?} must use http or https"
        )));
    }
    Ok(url)
}

fn check_settings(settings: &HttpStreamSettings) -> Result<(), SourceError> {
    let fail = |message: &str| Err(SourceError::Config(message.to_string()));
    if settings.format == BodyFormat::Xml && settings.records.is_none() {
        return fail("an XML stream needs a records path");
    }
    if let Some(rate) = settings.requests_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        return fail("requests_per_second must be a positive number");
    }
    if settings.max_response_bytes == 0 {
        return fail("max_response_bytes must be at least 1");
    }
    match &settings.paging {
        Paging::PageNumber { size: 0, .. } => return fail("the page size must be at least 1"),
        Paging::OffsetLimit { limit: 0, .. } => return fail("the page limit must be at least 1"),
        _ => {}
    }
    if let Some(incremental) = &settings.incremental
        && incremental.fields.is_empty()
    {
        return fail("an incremental stream needs at least one cursor field");
    }
    if let Auth::OAuth2ClientCredentials { token_url, .. } = &settings.auth {
        endpoint_url(token_url, "")?;
    }
    let api_key_header = match &settings.auth {
        Auth::ApiKey {
            name,
            value,
            location: ApiKeyLocation::Header,
        } => Some((name, value)),
        _ => None,
    };
    for (name, value) in settings
        .headers
        .iter()
        .map(|(n, v)| (n, v))
        .chain(api_key_header)
    {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(SourceError::Config(format!(
                "{name:?} is not a valid header name"
            )));
        }
        if HeaderValue::from_str(value).is_err() {
            // The value may be a secret, so only the header is named.
            return Err(SourceError::Config(format!(
                "the value of header {name:?} is not a valid header value"
            )));
        }
    }
    Ok(())
}

/// The value at a dotted path. A key that itself contains dots (`@odata.nextLink`) is matched
/// whole before the path is split.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let Value::Object(members) = value else {
        return None;
    };
    if let Some(found) = members.get(path) {
        return Some(found);
    }
    path.match_indices('.').find_map(|(dot, _)| {
        members
            .get(&path[..dot])
            .and_then(|inner| lookup(inner, &path[dot + 1..]))
    })
}

/// [`lookup`] for changing the value found.
fn lookup_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let Value::Object(members) = value else {
        return None;
    };
    if members.contains_key(path) {
        return members.get_mut(path);
    }
    // Found read-only first: the borrow checker cannot return from inside a mutable search.
    let dot = path.match_indices('.').map(|(dot, _)| dot).find(|dot| {
        members
            .get(&path[..*dot])
            .is_some_and(|inner| lookup(inner, &path[dot + 1..]).is_some())
    })?;
    members
        .get_mut(&path[..dot])
        .and_then(|inner| lookup_mut(inner, &path[dot + 1..]))
}

/// A record's cursor as an instant: the first field a date-time, an optional second field a
/// time of day added to it.
fn record_instant(record: &Value, fields: &[String]) -> Option<jiff::Timestamp> {
    let text_of = |field: &String| match lookup(record, field)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    let date = text_of(fields.first()?)?;
    let time = match fields.get(1) {
        Some(field) => Some(text_of(field)?),
        None => None,
    };
    parse_instant(&date, time.as_deref())
}

/// A date-time in any form the mapper reads (ISO 8601, SAP `/Date(ms)/`, Odoo), plus an
/// optional time of day (`PT14H04M56S` or `14:04:56`).
fn parse_instant(date: &str, time: Option<&str>) -> Option<jiff::Timestamp> {
    let base = crate::mapper::coerce::datetime(
        &Value::String(date.to_string()),
        &crate::mapper::coerce::DateFormat::Auto,
    )
    .ok()??;
    let Some(time) = time else {
        return Some(base);
    };
    let seconds = if let Some(rest) = time.strip_prefix("PT") {
        let mut total = 0i64;
        let mut number = String::new();
        for c in rest.chars() {
            match c {
                '0'..='9' => number.push(c),
                'H' | 'M' | 'S' => {
                    let n: i64 = number.parse().ok()?;
                    number.clear();
                    total += n * match c {
                        'H' => 3600,
                        'M' => 60,
                        _ => 1,
                    };
                }
                _ => return None,
            }
        }
        total
    } else {
        let parts: Vec<i64> = time
            .split(':')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        match parts.as_slice() {
            [h, m, s] => h * 3600 + m * 60 + s,
            [h, m] => h * 3600 + m * 60,
            _ => return None,
        }
    };
    base.checked_add(jiff::SignedDuration::from_secs(seconds))
        .ok()
}

/// A record's cursor: its cursor fields' values concatenated, or `None` when one is missing.
fn record_cursor(record: &Value, fields: &[String]) -> Option<String> {
    let mut cursor = String::new();
    for field in fields {
        match lookup(record, field)? {
            Value::String(text) if !text.is_empty() => cursor.push_str(text),
            Value::Number(number) => cursor.push_str(&number.to_string()),
            _ => return None,
        }
    }
    Some(cursor)
}

/// The message of an application error member: Odoo's `message` and `data.message`, SAP's
/// `message.value`, or the member itself.
fn application_message(error: &Value) -> String {
    let text = |value: Option<&Value>| match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        Some(Value::Object(inner)) => inner
            .get("value")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    };
    match error {
        Value::String(text) => text.clone(),
        Value::Object(members) => {
            let parts: Vec<String> = [
                text(members.get("message")),
                text(lookup(error, "data.message")),
            ]
            .into_iter()
            .flatten()
            .collect();
            if parts.is_empty() {
                excerpt(error.to_string().as_bytes())
            } else {
                parts.join(": ")
            }
        }
        other => excerpt(other.to_string().as_bytes()),
    }
}

/// The `rel="next"` target among all `Link` headers.
fn next_link_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(next_in_link_value)
}

fn next_in_link_value(value: &str) -> Option<String> {
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params_end = after[close..]
            .find(",")
            .map_or(after.len(), |comma| close + comma);
        let params = &after[close + 1..params_end];
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = &after[params_end..];
    }
    None
}

/// `Retry-After` as delay seconds or an HTTP date; a date in the past asks for no wait.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

fn seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

/// A non-success response's body, cut to an excerpt; read only as far as the excerpt needs.
async fn read_excerpt(mut response: Response) -> String {
    let mut body = Vec::new();
    while body.len() < EXCERPT_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    excerpt(&body)
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut cut: String = text.chars().take(EXCERPT_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

fn describe_transport(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "the request timed out"
    } else if error.is_redirect() {
        "redirect refused"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    // reqwest's own message repeats the URL, which may carry an API key; the innermost
    // source names the cause without it.
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if std::ptr::addr_eq(cause, error as &dyn std::error::Error) {
        what.to_string()
    } else {
        format!("{what}: {cause}")
    }
}

fn exhausted(error: SourceError, budget: Duration) -> SourceError {
    match error {
        SourceError::Http {
            url,
            status,
            message,
        } => SourceError::Http {
            url,
            status,
            message: format!("retry budget of {budget:?} spent; last failure: {message}"),
        },
        other => other,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_items::{broken, record};
    use serde_json::json;
    use wiremock::matchers::{
        basic_auth, bearer_token, body_json, body_string_contains, header, method, path,
        query_param, query_param_is_missing,
    };
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn settings(server: &MockServer, path: &str) -> HttpStreamSettings {
        HttpStreamSettings {
            base_url: server.uri(),
            path: path.to_string(),
            method: HttpMethod::Get,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            format: BodyFormat::Json,
            records: None,
            paging: Paging::None,
            auth: Auth::None,
            incremental: None,
            error_path: None,
            retry_max_elapsed: Duration::from_millis(200),
            requests_per_second: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }

    fn json_page(body: Value) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(body)
    }

    async fn run(
        settings: HttpStreamSettings,
        cursor: Option<&str>,
    ) -> Result<Vec<Batch>, SourceError> {
        let mut source = HttpSource::new(settings, cursor.map(str::to_string), "erp/items")?;
        let mut batches = Vec::new();
        while let Some(batch) = source.next_batch().await? {
            batches.push(batch);
        }
        Ok(batches)
    }

    /// The `id` member of every record, batch by batch.
    fn ids(batches: &[Batch]) -> Vec<Vec<Value>> {
        batches
            .iter()
            .map(|batch| {
                batch
                    .items
                    .iter()
                    .map(|item| record(item).value["id"].clone())
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn page_number_paging_ends_on_an_empty_page() {
        let server = MockServer::start().await;
        for (page, body) in [
            ("1", json!([{"id": 1}, {"id": 2}])),
            ("2", json!([{"id": 3}])),
            ("3", json!([])),
        ] {
            Mock::given(method("GET"))
                .and(path("/items"))
                .and(query_param("page", page))
                .and(query_param("size", "2"))
                .and(query_param("lang", "de"))
                .respond_with(json_page(body))
                .expect(1)
                .mount(&server)
                .await;
        }
        let mut settings = settings(&server, "/items");
        settings.query = vec![("lang".to_string(), "de".to_string())];
        settings.paging = Paging::PageNumber {
            param: "page".to_string(),
            start: 1,
            size_param: Some("size".to_string()),
            size: 2,
        };
        let batches = run(settings, None).await.unwrap();
        assert_eq!(
            ids(&batches),
            vec![vec![json!(1), json!(2)], vec![json!(3)]]
        );
        assert!(
            batches
                .iter()
                .all(|batch| batch.checkpoint == Checkpoint::None)
        );
        let origin = &record(&batches[1].items[0]).origin;
        assert_eq!(
            origin,
            &Origin {
                location: "erp/items page 2".to_string(),
                line: None,
                index: 0
            }
        );
    }

    #[tokio::test]
    async fn offset_limit_paging_ends_on_a_short_page() {
        let server = MockServer::start().await;
        for (offset, body) in [
            ("0", json!({"result": [{"id": 1}, {"id": 2}]})),
            ("2", json!({"result": [{"id": 3}]})),
        ] {
            Mock::given(path("/items"))
                .and(query_param("offset", offset))
                .and(query_param("limit", "2"))
                .respond_with(json_page(body))
                .expect(1)
                .mount(&server)
                .await;
        }
        let mut settings = settings(&server, "items");
        settings.records = Some("result".to_string());
        settings.paging = Paging::OffsetLimit {
            offset_param: "offset".to_string(),
            limit_param: "limit".to_string(),
            limit: 2,
        };
        let batches = run(settings, None).await.unwrap();
        assert_eq!(
            ids(&batches),
            vec![vec![json!(1), json!(2)], vec![json!(3)]]
        );
    }

    #[tokio::test]
    async fn cursor_paging_sends_each_token_until_it_is_null() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .and(query_param_is_missing("cursor"))
            .respond_with(json_page(
                json!({"data": [{"id": 1}], "meta": {"next": "a b&c"}}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(query_param("cursor", "a b&c"))
            .respond_with(json_page(
                json!({"data": [{"id": 2}], "meta": {"next": null}}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.records = Some("data".to_string());
        settings.paging = Paging::Cursor {
            param: "cursor".to_string(),
            next: "meta.next".to_string(),
        };
        let batches = run(settings, None).await.unwrap();
        assert_eq!(ids(&batches), vec![vec![json!(1)], vec![json!(2)]]);
    }

    #[tokio::test]
    async fn odata_v2_absolute_next_links_are_followed() {
        let server = MockServer::start().await;
        let next = format!("{}/odata/A_BusinessPartner?$skiptoken=2", server.uri());
        Mock::given(path("/odata/A_BusinessPartner"))
            .and(query_param_is_missing("$skiptoken"))
            .and(query_param("$format", "json"))
            .respond_with(json_page(
                json!({"d": {"results": [{"id": "1"}], "__next": next}}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/odata/A_BusinessPartner"))
            .and(query_param("$skiptoken", "2"))
            .respond_with(json_page(json!({"d": {"results": [{"id": "2"}]}})))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/odata/A_BusinessPartner");
        settings.query = vec![("$format".to_string(), "json".to_string())];
        settings.records = Some("d.results".to_string());
        settings.paging = Paging::NextLink {
            next: "d.__next".to_string(),
        };
        let batches = run(settings, None).await.unwrap();
        assert_eq!(ids(&batches), vec![vec![json!("1")], vec![json!("2")]]);
    }

    #[tokio::test]
    async fn odata_v4_relative_next_links_resolve_against_the_request_url() {
        let server = MockServer::start().await;
        Mock::given(path("/api/v2.0/customers"))
            .and(query_param_is_missing("$skiptoken"))
            .respond_with(json_page(json!({
                "value": [{"id": 1}],
                "@odata.nextLink": "customers?$skiptoken=abc"
            })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/api/v2.0/customers"))
            .and(query_param("$skiptoken", "abc"))
            .respond_with(json_page(json!({"value": [{"id": 2}]})))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/api/v2.0/customers");
        settings.records = Some("value".to_string());
        settings.paging = Paging::NextLink {
            next: "@odata.nextLink".to_string(),
        };
        let batches = run(settings, None).await.unwrap();
        assert_eq!(ids(&batches), vec![vec![json!(1)], vec![json!(2)]]);
    }

    #[tokio::test]
    async fn a_next_link_to_another_host_is_refused() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .respond_with(json_page(
                json!({"value": [], "@odata.nextLink": "https://elsewhere.example/items"}),
            ))
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.records = Some("value".to_string());
        settings.paging = Paging::NextLink {
            next: "@odata.nextLink".to_string(),
        };
        let error = run(settings, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/items: HTTP 200: the next link points to https://elsewhere.example, \
                 outside {}; it is not followed",
                server.uri(),
                server.uri()
            )
        );
    }

    #[tokio::test]
    async fn redirects_stay_on_their_origin() {
        let server = MockServer::start().await;
        let elsewhere = MockServer::start().await;
        Mock::given(path("/old"))
            .respond_with(
                ResponseTemplate::new(301)
                    .insert_header("Location", format!("{}/items", server.uri())),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/away"))
            .respond_with(
                ResponseTemplate::new(302)
                    .insert_header("Location", format!("{}/items", elsewhere.uri())),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .respond_with(json_page(json!([])))
            .expect(0)
            .mount(&elsewhere)
            .await;
        let mut followed = settings(&server, "/old");
        followed.auth = Auth::ApiKey {
            name: "X-Api-Key".to_string(),
            value: "k3y".to_string(),
            location: ApiKeyLocation::Header,
        };
        let mut refused = followed.clone();
        refused.path = "/away".to_string();
        assert_eq!(
            ids(&run(followed, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
        let error = run(refused, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/away: redirect refused: a redirect to {} is not followed",
                server.uri(),
                elsewhere.uri()
            )
        );
    }

    #[tokio::test]
    async fn link_header_paging_follows_rel_next() {
        let server = MockServer::start().await;
        let link = format!(
            "<{0}/items?page=1>; rel=\"first\", <{0}/items?page=2>; rel=\"next\"",
            server.uri()
        );
        Mock::given(path("/items"))
            .and(query_param_is_missing("page"))
            .respond_with(json_page(json!([{"id": 1}])).insert_header("Link", link.as_str()))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(query_param("page", "2"))
            .respond_with(
                json_page(json!([{"id": 2}]))
                    .insert_header("Link", format!("<{}/items>; rel=\"first\"", server.uri())),
            )
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.paging = Paging::LinkHeader;
        let batches = run(settings, None).await.unwrap();
        assert_eq!(ids(&batches), vec![vec![json!(1)], vec![json!(2)]]);
    }

    #[test]
    fn link_values_yield_only_the_next_target() {
        assert_eq!(
            next_in_link_value(
                "<https://a/x?p=1,2>; rel=\"prev\", <https://a/x?p=3>; rel=\"last next\""
            ),
            Some("https://a/x?p=3".to_string())
        );
        assert_eq!(next_in_link_value("<https://a/x>; rel=prev"), None);
    }

    #[tokio::test]
    async fn basic_auth_is_sent() {
        let server = MockServer::start().await;
        Mock::given(basic_auth("sap", "s3cret"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = Auth::Basic {
            username: "sap".to_string(),
            password: "s3cret".to_string(),
        };
        assert_eq!(
            ids(&run(settings, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
    }

    #[tokio::test]
    async fn bearer_auth_is_sent() {
        let server = MockServer::start().await;
        Mock::given(bearer_token("t0k"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = Auth::Bearer {
            token: "t0k".to_string(),
        };
        assert_eq!(
            ids(&run(settings, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
    }

    #[tokio::test]
    async fn api_key_header_is_sent() {
        let server = MockServer::start().await;
        Mock::given(header("X-Api-Key", "k3y"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = Auth::ApiKey {
            name: "X-Api-Key".to_string(),
            value: "k3y".to_string(),
            location: ApiKeyLocation::Header,
        };
        assert_eq!(
            ids(&run(settings, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
    }

    #[tokio::test]
    async fn api_key_query_is_sent_and_masked_in_errors() {
        let server = MockServer::start().await;
        Mock::given(query_param("api_key", "k3y"))
            .and(query_param("page", "1"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(query_param("api_key", "k3y"))
            .and(query_param("page", "2"))
            .respond_with(ResponseTemplate::new(403).set_body_string("forbidden"))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = Auth::ApiKey {
            name: "api_key".to_string(),
            value: "k3y".to_string(),
            location: ApiKeyLocation::Query,
        };
        settings.paging = Paging::PageNumber {
            param: "page".to_string(),
            start: 1,
            size_param: None,
            size: 1,
        };
        let error = run(settings, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/items?page=2&api_key=***: HTTP 403: forbidden",
                server.uri()
            )
        );
    }

    fn oauth(server: &MockServer) -> Auth {
        Auth::OAuth2ClientCredentials {
            token_url: format!("{}/oauth/token", server.uri()),
            client_id: "client".to_string(),
            client_secret: "secret".to_string(),
            scope: Some("api".to_string()),
        }
    }

    fn token(value: &str) -> ResponseTemplate {
        json_page(json!({"access_token": value, "token_type": "Bearer", "expires_in": 3600}))
    }

    #[tokio::test]
    async fn oauth2_token_is_fetched_once_for_all_pages() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .and(body_string_contains("grant_type=client_credentials"))
            .and(body_string_contains("client_id=client"))
            .and(body_string_contains("client_secret=secret"))
            .and(body_string_contains("scope=api"))
            .respond_with(token("tok-1"))
            .expect(1)
            .mount(&server)
            .await;
        for (page, body) in [
            ("1", json!([{"id": 1}])),
            ("2", json!([{"id": 2}])),
            ("3", json!([])),
        ] {
            Mock::given(path("/items"))
                .and(bearer_token("tok-1"))
                .and(query_param("page", page))
                .respond_with(json_page(body))
                .expect(1)
                .mount(&server)
                .await;
        }
        let mut settings = settings(&server, "/items");
        settings.auth = oauth(&server);
        settings.paging = Paging::PageNumber {
            param: "page".to_string(),
            start: 1,
            size_param: None,
            size: 1,
        };
        let batches = run(settings, None).await.unwrap();
        assert_eq!(ids(&batches), vec![vec![json!(1)], vec![json!(2)]]);
    }

    #[tokio::test]
    async fn oauth2_a_401_refreshes_the_token_once() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth/token"))
            .respond_with(token("stale"))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/oauth/token"))
            .respond_with(token("fresh"))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(bearer_token("stale"))
            .respond_with(ResponseTemplate::new(401).set_body_string("expired"))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(bearer_token("fresh"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = oauth(&server);
        assert_eq!(
            ids(&run(settings, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
    }

    #[tokio::test]
    async fn oauth2_a_second_401_fails() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth/token"))
            .respond_with(token("rejected"))
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .respond_with(ResponseTemplate::new(401).set_body_string("no access"))
            .expect(2)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = oauth(&server);
        let error = run(settings, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{}/items: HTTP 401: no access", server.uri())
        );
    }

    #[tokio::test]
    async fn oauth2_a_token_about_to_expire_is_not_reused() {
        let server = MockServer::start().await;
        // 30 s of lifetime is all margin: every request needs a new token.
        Mock::given(path("/oauth/token"))
            .respond_with(json_page(
                json!({"access_token": "short", "expires_in": 30}),
            ))
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(bearer_token("short"))
            .and(query_param("page", "1"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(bearer_token("short"))
            .and(query_param("page", "2"))
            .respond_with(json_page(json!([])))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = oauth(&server);
        settings.paging = Paging::PageNumber {
            param: "page".to_string(),
            start: 1,
            size_param: None,
            size: 1,
        };
        assert_eq!(
            ids(&run(settings, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
    }

    #[tokio::test]
    async fn oauth2_rejected_credentials_fail_without_calling_the_api() {
        let server = MockServer::start().await;
        Mock::given(path("/oauth/token"))
            .respond_with(
                ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .respond_with(json_page(json!([])))
            .expect(0)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.auth = oauth(&server);
        let error = run(settings, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/oauth/token: HTTP 401: {{\"error\":\"invalid_client\"}}",
                server.uri()
            )
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        let settings = settings(&server, "/items");
        assert_eq!(
            ids(&run(settings, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
    }

    #[tokio::test]
    async fn retry_after_is_waited_for() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "2"))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.retry_max_elapsed = Duration::from_secs(10);
        let started = Instant::now();
        assert_eq!(
            ids(&run(settings, None).await.unwrap()),
            vec![vec![json!(1)]]
        );
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        let wait = parse_retry_after(&date).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn exhausted_retries_name_the_status_and_body() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .respond_with(ResponseTemplate::new(503).set_body_string("maintenance"))
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.retry_max_elapsed = Duration::from_millis(50);
        let error = run(settings, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/items: HTTP 503: retry budget of 50ms spent; last failure: maintenance",
                server.uri()
            )
        );
        let requests = server.received_requests().await.unwrap();
        assert!(requests.len() >= 2, "{} requests", requests.len());
    }

    #[tokio::test]
    async fn client_errors_fail_at_once_with_a_body_excerpt() {
        let server = MockServer::start().await;
        let body = format!("{{\"error\":\"{}\"}}", "x".repeat(600));
        Mock::given(path("/items"))
            .respond_with(ResponseTemplate::new(400).set_body_string(body.clone()))
            .expect(1)
            .mount(&server)
            .await;
        let error = run(settings(&server, "/items"), None).await.unwrap_err();
        let SourceError::Http {
            url,
            status,
            message,
        } = error
        else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(url, format!("{}/items", server.uri()));
        assert_eq!(status, Some(400));
        assert_eq!(message, format!("{}…", &body[..500]));
    }

    fn incremental(fields: &[&str], initial: Option<&str>) -> Option<Incremental> {
        Some(Incremental {
            fields: fields.iter().map(|field| field.to_string()).collect(),
            param: "$filter".to_string(),
            template: "LastChangeDateTime gt datetimeoffset'{cursor}'".to_string(),
            initial: initial.map(str::to_string),
            format: None,
            lookback: None,
        })
    }

    #[tokio::test]
    async fn instant_cursors_read_sap_date_and_time_and_write_the_filter_with_lookback() {
        let server = MockServer::start().await;
        // 2024-05-01 = 1714521600000 ms; with PT08H00M00S that is 08:00 UTC.
        Mock::given(method("GET"))
            .and(path("/partners"))
            .and(query_param(
                "$filter",
                "LastChangeDate ge datetime'2024-04-30T23:50:00'",
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "d": { "results": [
                { "id": 1, "LastChangeDate": "/Date(1714521600000)/", "LastChangeTime": "PT08H00M00S" },
                { "id": 2, "LastChangeDate": "/Date(1714608000000)/", "LastChangeTime": "PT07H30M15S" },
                { "id": 3, "LastChangeDate": "/Date(1714521600000)/", "LastChangeTime": "PT23H59M59S" },
            ] } })))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/partners");
        settings.records = Some("d.results".to_string());
        settings.incremental = Some(Incremental {
            fields: vec!["LastChangeDate".to_string(), "LastChangeTime".to_string()],
            param: "$filter".to_string(),
            template: "LastChangeDate ge datetime'{cursor}'".to_string(),
            initial: None,
            format: Some("%Y-%m-%dT%H:%M:%S".to_string()),
            lookback: Some(Duration::from_secs(600)),
        });
        let mut source =
            HttpSource::new(settings, Some("2024-05-01T00:00:00Z".to_string()), "sap/bp").unwrap();
        let batch = source.next_batch().await.unwrap().unwrap();
        assert_eq!(
            batch.checkpoint,
            Checkpoint::Cursor("2024-05-02T07:30:15Z".to_string()),
            "the latest instant, compared as instants, stored as RFC 3339 UTC"
        );
        server.verify().await;
    }

    #[test]
    fn instants_parse_from_erp_forms() {
        let at = |date: &str, time: Option<&str>| parse_instant(date, time).map(|t| t.to_string());
        assert_eq!(
            at("/Date(1714521600000)/", Some("PT14H04M56S")).as_deref(),
            Some("2024-05-01T14:04:56Z")
        );
        assert_eq!(
            at("2024-05-01 10:20:30", None).as_deref(),
            Some("2024-05-01T10:20:30Z")
        );
        assert_eq!(
            at("2024-05-01", Some("14:04:56")).as_deref(),
            Some("2024-05-01T14:04:56Z")
        );
        assert_eq!(
            at("/Date(1714521600000+0000)/", None).as_deref(),
            Some("2024-05-01T00:00:00Z")
        );
        assert_eq!(at("yesterday", None), None);
        assert_eq!(at("2024-05-01", Some("PT14X")), None);
    }

    #[tokio::test]
    async fn incremental_filter_and_final_cursor() {
        let server = MockServer::start().await;
        let filter = "LastChangeDateTime gt datetimeoffset'2024-05-01T00:00:00Z'";
        Mock::given(path("/items"))
            .and(query_param("$filter", filter))
            .and(query_param("$skip", "0"))
            .respond_with(json_page(json!({"value": [
                {"id": 1, "changed": "2024-06-03T10:00:00Z"},
                {"id": 2, "changed": "2024-06-09T08:00:00Z"}
            ]})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(query_param("$filter", filter))
            .and(query_param("$skip", "2"))
            .respond_with(json_page(json!({"value": [
                {"id": 3, "changed": "2024-06-05T00:00:00Z"},
                {"id": 4}
            ]})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/items"))
            .and(query_param("$skip", "4"))
            .respond_with(json_page(json!({"value": []})))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.records = Some("value".to_string());
        settings.incremental = incremental(&["changed"], Some("2000-01-01T00:00:00Z"));
        settings.paging = Paging::OffsetLimit {
            offset_param: "$skip".to_string(),
            limit_param: "$top".to_string(),
            limit: 2,
        };
        let batches = run(settings, Some("2024-05-01T00:00:00Z")).await.unwrap();
        let checkpoints: Vec<_> = batches
            .iter()
            .map(|batch| batch.checkpoint.clone())
            .collect();
        assert_eq!(
            checkpoints,
            vec![
                Checkpoint::None,
                Checkpoint::None,
                Checkpoint::Cursor("2024-06-09T08:00:00Z".to_string())
            ]
        );
        assert!(batches[2].items.is_empty());
    }

    #[tokio::test]
    async fn incremental_cursor_from_two_fields_without_initial_filter() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .and(query_param_is_missing("$filter"))
            .respond_with(json_page(json!({"d": {"results": [
                {"id": 1, "LastChangeDate": "20240601", "LastChangeTime": "235959"},
                {"id": 2, "LastChangeDate": "20240602", "LastChangeTime": "000001"},
                {"id": 3, "LastChangeDate": "20240602", "LastChangeTime": ""}
            ]}})))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.records = Some("d.results".to_string());
        settings.incremental = incremental(&["LastChangeDate", "LastChangeTime"], None);
        let batches = run(settings, None).await.unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(
            batches[0].checkpoint,
            Checkpoint::Cursor("20240602000001".to_string())
        );
    }

    #[tokio::test]
    async fn incremental_run_without_changes_keeps_the_old_cursor() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .and(query_param(
                "$filter",
                "LastChangeDateTime gt datetimeoffset'2024-07-01'",
            ))
            .respond_with(json_page(json!({"d": {}})))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.records = Some("d.results".to_string());
        settings.incremental = incremental(&["changed"], None);
        let batches = run(settings, Some("2024-07-01")).await.unwrap();
        assert_eq!(
            batches,
            vec![Batch {
                items: Vec::new(),
                checkpoint: Checkpoint::Cursor("2024-07-01".to_string())
            }]
        );
    }

    fn odoo_body(offset: u64) -> Value {
        json!({
            "jsonrpc": "2.0",
            "method": "call",
            "params": {
                "model": "res.partner",
                "method": "search_read",
                "args": [[["write_date", ">", "2024-01-01 00:00:00"]]],
                "kwargs": {"fields": ["name"], "offset": offset, "limit": 2}
            }
        })
    }

    #[tokio::test]
    async fn odoo_json_rpc_posts_the_filled_template_and_reports_application_errors() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/web/dataset/call_kw"))
            .and(body_json(odoo_body(0)))
            .respond_with(json_page(json!({"jsonrpc": "2.0", "id": null, "result": [
                {"id": 7, "write_date": "2024-02-01 10:00:00"},
                {"id": 8, "write_date": "2024-03-01 10:00:00"}
            ]})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/web/dataset/call_kw"))
            .and(body_json(odoo_body(2)))
            .respond_with(json_page(json!({"jsonrpc": "2.0", "id": null, "error": {
                "code": 200,
                "message": "Odoo Server Error",
                "data": {"name": "odoo.exceptions.AccessError", "message": "Access denied"}
            }})))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/web/dataset/call_kw");
        settings.method = HttpMethod::Post;
        settings.body = Some(json!({
            "jsonrpc": "2.0",
            "method": "call",
            "params": {
                "model": "res.partner",
                "method": "search_read",
                "args": [[["write_date", ">", "{cursor}"]]],
                "kwargs": {"fields": ["name"], "offset": "{offset}", "limit": "{limit}"}
            }
        }));
        settings.records = Some("result".to_string());
        settings.error_path = Some("error".to_string());
        settings.paging = Paging::OffsetLimit {
            offset_param: String::new(),
            limit_param: String::new(),
            limit: 2,
        };
        settings.incremental = Some(Incremental {
            fields: vec!["write_date".to_string()],
            param: String::new(),
            template: "{cursor}".to_string(),
            initial: Some("2024-01-01 00:00:00".to_string()),
            format: None,
            lookback: None,
        });
        let mut source = HttpSource::new(settings, None, "odoo/partners").unwrap();
        let first = source.next_batch().await.unwrap().unwrap();
        assert_eq!(ids(&[first]), vec![vec![json!(7), json!(8)]]);
        let error = source.next_batch().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/web/dataset/call_kw: HTTP 200: the response reports an error: \
                 Odoo Server Error: Access denied",
                server.uri()
            )
        );
    }

    #[tokio::test]
    async fn xml_bodies_yield_the_elements_at_the_records_path() {
        let server = MockServer::start().await;
        let envelope = r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <n0:Response xmlns:n0="urn:sap">
      <Customer id="1"><Name>M&#252;ller GmbH</Name></Customer>
      <Customer id="2"><Name>&bogus;</Name></Customer>
    </n0:Response>
  </soap:Body>
</soap:Envelope>"#;
        Mock::given(path("/soap"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(envelope, "text/xml"))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/soap");
        settings.format = BodyFormat::Xml;
        settings.records = Some("soap:Envelope/soap:Body/n0:Response/Customer".to_string());
        let batches = run(settings, None).await.unwrap();
        assert_eq!(batches.len(), 1);
        let first = record(&batches[0].items[0]);
        assert_eq!(first.value, json!({"@id": "1", "Name": "Müller GmbH"}));
        assert_eq!(first.origin.location, "erp/items page 1");
        assert!(broken(&batches[0].items[1]).reason.contains("bogus"));
    }

    #[tokio::test]
    async fn a_response_over_the_size_limit_is_refused() {
        let server = MockServer::start().await;
        let records: Vec<Value> = (0..100).map(|id| json!({"id": id})).collect();
        Mock::given(path("/items"))
            .respond_with(json_page(Value::Array(records)))
            .expect(1)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.max_response_bytes = 100;
        let error = run(settings, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/items: HTTP 200: the response is larger than the limit of 100 bytes",
                server.uri()
            )
        );
    }

    #[tokio::test]
    async fn requests_are_paced_to_the_rate_limit() {
        let server = MockServer::start().await;
        Mock::given(path("/items"))
            .and(header("accept", "application/json"))
            .respond_with(json_page(json!([{"id": 1}])))
            .expect(3)
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/items");
        settings.requests_per_second = Some(10.0);
        settings.paging = Paging::PageNumber {
            param: "page".to_string(),
            start: 1,
            size_param: None,
            size: 1,
        };
        let mut source = HttpSource::new(settings, None, "erp/items").unwrap();
        let started = Instant::now();
        for _ in 0..3 {
            source.next_batch().await.unwrap().unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn connection_failures_are_retried_then_reported() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut settings = HttpStreamSettings {
            base_url: format!("http://127.0.0.1:{port}"),
            ..settings(&MockServer::start().await, "/items")
        };
        settings.retry_max_elapsed = Duration::from_millis(30);
        let error = run(settings, None).await.unwrap_err();
        let SourceError::Http {
            url,
            status,
            message,
        } = error
        else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(url, format!("http://127.0.0.1:{port}/items"));
        assert_eq!(status, None);
        assert!(
            message.starts_with("retry budget of 30ms spent; last failure: cannot connect"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn timeouts_are_retried_then_reported() {
        let server = MockServer::start().await;
        Mock::given(path("/slow"))
            .respond_with(json_page(json!([])).set_delay(Duration::from_millis(500)))
            .mount(&server)
            .await;
        let mut settings = settings(&server, "/slow");
        settings.timeout = Duration::from_millis(40);
        settings.retry_max_elapsed = Duration::from_millis(100);
        let error = run(settings, None).await.unwrap_err();
        let message = error.to_string();
        let expected = format!(
            "{}/slow: retry budget of 100ms spent; last failure: the request timed out",
            server.uri()
        );
        assert!(message.starts_with(&expected), "{message}");
        let requests = server.received_requests().await.unwrap();
        assert!(requests.len() >= 2, "{} requests", requests.len());
    }

    #[tokio::test]
    async fn bodies_that_are_not_json_or_not_arrays_are_errors() {
        let server = MockServer::start().await;
        Mock::given(path("/broken"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>login</html>"))
            .mount(&server)
            .await;
        Mock::given(path("/object"))
            .respond_with(json_page(json!({"d": {"results": {"id": 1}}})))
            .mount(&server)
            .await;
        let error = run(settings(&server, "/broken"), None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/broken: HTTP 200: the response is not valid JSON \
                 (expected value at line 1 column 1): <html>login</html>",
                server.uri()
            )
        );
        let mut object = settings(&server, "/object");
        object.records = Some("d.results".to_string());
        let error = run(object, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/object: HTTP 200: expected an array of records at \"d.results\", \
                 found an object",
                server.uri()
            )
        );
    }

    #[test]
    fn dotted_paths_match_keys_that_contain_dots() {
        let mut document = json!({"@odata.nextLink": "n", "d": {"results": [1], "x.y": {"z": 2}}});
        assert_eq!(lookup(&document, "@odata.nextLink"), Some(&json!("n")));
        assert_eq!(lookup(&document, "d.x.y.z"), Some(&json!(2)));
        assert_eq!(lookup(&document, "d.missing"), None);
        *lookup_mut(&mut document, "d.x.y.z").unwrap() = json!(3);
        assert_eq!(document["d"]["x.y"]["z"], json!(3));
    }

    #[test]
    fn placeholders_are_filled_in_one_pass() {
        let vars = Vars {
            cursor: "{page}".to_string(),
            offset: 40,
            limit: Some(20),
            page: 3,
        };
        assert_eq!(
            vars.fill("c={cursor} o={offset} l={limit} p={page} {other} {"),
            "c={page} o=40 l=20 p=3 {other} {"
        );
        assert_eq!(
            vars.fill_json(&json!({"a": ["{limit}", "p{page}", 1]})),
            json!({"a": [20, "p3", 1]})
        );
    }

    #[test]
    fn settings_are_checked_before_any_request() {
        let server_settings = |base: &str| HttpStreamSettings {
            base_url: base.to_string(),
            path: "/items".to_string(),
            method: HttpMethod::Get,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            format: BodyFormat::Xml,
            records: None,
            paging: Paging::None,
            auth: Auth::None,
            incremental: None,
            error_path: None,
            retry_max_elapsed: Duration::from_secs(1),
            requests_per_second: None,
            max_response_bytes: 1,
            timeout: Duration::from_secs(1),
            ca_file: None,
        };
        let error = |settings| match HttpSource::new(settings, None, "x") {
            Ok(_) => panic!("settings accepted"),
            Err(error) => error.to_string(),
        };
        assert_eq!(
            error(server_settings("ftp://host")),
            "URL \"ftp://host/items\" must use http or https"
        );
        assert_eq!(
            error(server_settings("https://host")),
            "an XML stream needs a records path"
        );
        let mut bad_header = server_settings("https://host");
        bad_header.records = Some("a/b".to_string());
        bad_header.auth = Auth::ApiKey {
            name: "X-Key".to_string(),
            value: "line\nbreak".to_string(),
            location: ApiKeyLocation::Header,
        };
        assert_eq!(
            error(bad_header),
            "the value of header \"X-Key\" is not a valid header value"
        );
    }
}
