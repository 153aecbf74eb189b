//! The HTTP API, served beside `/metrics` on the same port: stock and orders read from the
//! owning task's live state, and orders placed through it (ARCHITECTURE.md, "The HTTP API").
//!
//! - `GET /stock/{sku}` and `GET /orders/{order_id}`: the key's partition comes from Kafka's
//!   partitioner (as the producers place the records), its store from [`LiveStores`] if this
//!   instance runs the task. Otherwise the request is forwarded, once, to the instance the
//!   group's assignment names ([`owners`]), and its answer passed on. Either way the answer is
//!   committed state, and `x-stockflow-served-by` names the instance whose store answered.
//! - `POST /orders[?wait=5s]`: the body is checked ([`body`]; 400 names the field, nothing is
//!   published), an order id already known is refused (409), and an `OrderCreated` is
//!   published to `orders`, keyed by its id. Without `wait`: 202. With it: the order is read
//!   back until it is decided (201 with the outcome) or the wait is over (202, pending); the
//!   served-by header then names the instance that read it (this one, while nothing was read).
//! - `GET /openapi.json`: the OpenAPI 3.1 description of all of it.

pub mod body;
pub mod owners;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runtime::format;
use crate::runtime::partitioner::partition_for;
use crate::runtime::queryable::{LiveStores, Lookup};
use crate::topology::inventory::{SkuRecord, keys};
use crate::topology::order::{self, OrderRecord};
use crate::topology::{INVENTORY_STORE, ORDERS_STORE};
use body::{NewOrder, OrderView, Refusal, StockView};
use owners::Owners;

/// The header naming the instance whose store answered.
pub const SERVED_BY: &str = "x-stockflow-served-by";
/// The header of a forwarded request: its receiver answers from its own stores or not at all.
const FORWARDED: &str = "x-stockflow-forwarded";
/// The longest `?wait=` taken.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a forwarded request or a publish may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// The OpenAPI description.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the API needs: the stores, the group's owners, a producer for `orders`.
pub struct Api {
    pub instance_id: String,
    pub live: LiveStores,
    pub owners: Owners,
    pub producer: FutureProducer,
    pub codec: Arc<Codec>,
    /// Sub-topology A's external source (owner lookups) and where orders are published.
    pub orders_topic: String,
    /// Sub-topology B's external source (owner lookups).
    pub adjustments_topic: String,
    /// Task counts of A and B.
    pub order_partitions: i32,
    pub inventory_partitions: i32,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("instance_id", &self.instance_id)
            .field("orders_topic", &self.orders_topic)
            .finish_non_exhaustive()
    }
}

/// The API's routes, to merge into the metrics server's router.
pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/stock/{sku}", get(get_stock))
        .route("/orders/{order_id}", get(get_order))
        .route("/orders", axum::routing::post(post_order))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .with_state(api)
}

/// An answer other than the one asked for: a status and a message (`{"error": ...}`).
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    error: String,
}

impl Failure {
    fn unavailable(error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: error.into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &serde_json::json!({ "error": self.error }));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("invariant: API answers serialize");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A value and the instance whose store gave it.
struct Served<T> {
    value: T,
    by: String,
}

fn found_response<T: Serialize>(served: Served<T>, status: StatusCode) -> Response {
    let mut response = json(status, &served.value);
    if let Ok(by) = HeaderValue::from_str(&served.by) {
        response.headers_mut().insert(SERVED_BY, by);
    }
    response
}

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

async fn get_stock(
    State(api): State<Arc<Api>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Response {
    let found = api.stock(&sku, forwarded(&headers)).await;
    answer_get(found, || format!("unknown sku {sku}"))
}

async fn get_order(
    State(api): State<Arc<Api>>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let found = api.order(&order_id, forwarded(&headers)).await;
    answer_get(found, || format!("unknown order {order_id}"))
}

/// A GET's answer: 200 with what was found, 404 with `unknown`, or the failure.
fn answer_get<T: Serialize>(
    found: Result<Option<Served<T>>, Failure>,
    unknown: impl FnOnce() -> String,
) -> Response {
    match found {
        Ok(Some(served)) => found_response(served, StatusCode::OK),
        Ok(None) => Failure {
            status: StatusCode::NOT_FOUND,
            error: unknown(),
        }
        .into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// `POST /orders`'s query: `wait`, a duration (`5s`, `500ms`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PostQuery {
    wait: Option<String>,
}

async fn post_order(
    State(api): State<Arc<Api>>,
    query: Result<Query<PostQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let refused = |refusal: Refusal| json(StatusCode::BAD_REQUEST, &refusal);
    let wait = match query.map(|Query(q)| q.wait) {
        Ok(None) => None,
        Ok(Some(text)) => match humantime::parse_duration(&text) {
            Ok(wait) if wait <= MAX_WAIT => Some(wait),
            Ok(_) => {
                return refused(Refusal {
                    error: format!("wait: at most {}", humantime::format_duration(MAX_WAIT)),
                    field: Some("wait".into()),
                });
            }
            Err(e) => {
                return refused(Refusal {
                    error: format!("wait: {e} (e.g. 5s or 500ms)"),
                    field: Some("wait".into()),
                });
            }
        },
        Err(rejection) => {
            return refused(Refusal {
                error: format!("the query: {rejection} (only wait is taken)"),
                field: None,
            });
        }
    };
    let order = match NewOrder::parse(&body) {
        Ok(order) => order,
        Err(refusal) => return refused(refusal),
    };
    let order_id = order
        .order_id
        .clone()
        .unwrap_or_else(|| format!("api-{:016x}", rand::random::<u64>()));
    // A known id is refused before anything is published. (Two requests with the same new id
    // at once both pass; the processor decides the id once all the same.)
    if let Ok(Some(existing)) = api.order(&order_id, false).await {
        return json(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": format!("order_id: order {order_id} exists"),
                "field": "order_id",
                "order": existing.value,
            }),
        );
    }
    let event = order.event(&order_id, schemas::now_millis());
    if let Err(failure) = api.publish(&event).await {
        return failure.into_response();
    }
    let mut answer = Served {
        value: OrderView::new(&order_id, order::record_of(&event, event.created_at)),
        by: api.instance_id.clone(),
    };
    let mut status = StatusCode::ACCEPTED;
    if let Some(wait) = wait {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Ok(Some(served)) = api.order(&order_id, false).await {
                let decided = served.value.is_decided();
                answer = served;
                if decided {
                    status = StatusCode::CREATED;
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
    let mut response = found_response(answer, status);
    if let Ok(location) = HeaderValue::from_str(&order_path(&order_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `/orders/<order_id>`, the id percent-encoded.
fn order_path(order_id: &str) -> String {
    let mut url = reqwest::Url::parse("http://localhost/orders/").expect("invariant: a URL");
    url.path_segments_mut()
        .expect("invariant: an http URL has segments")
        .pop_if_empty()
        .push(order_id);
    url.path().to_owned()
}

impl Api {
    /// `sku`'s stock, from its task's store here or at its owner.
    async fn stock(
        &self,
        sku: &str,
        forwarded: bool,
    ) -> Result<Option<Served<StockView>>, Failure> {
        let partition = partition_for(sku.as_bytes(), self.inventory_partitions);
        let key = keys::sku(sku);
        let here = self.local::<SkuRecord>(INVENTORY_STORE, partition, key.as_bytes())?;
        match here {
            Some(record) => Ok(record.map(|r| Served {
                value: StockView::new(sku, r),
                by: self.instance_id.clone(),
            })),
            None => {
                self.remote(
                    &self.adjustments_topic,
                    partition,
                    &["stock", sku],
                    forwarded,
                )
                .await
            }
        }
    }

    /// Order `order_id`, from its task's store here or at its owner.
    async fn order(
        &self,
        order_id: &str,
        forwarded: bool,
    ) -> Result<Option<Served<OrderView>>, Failure> {
        let partition = partition_for(order_id.as_bytes(), self.order_partitions);
        let here = self.local::<OrderRecord>(ORDERS_STORE, partition, order_id.as_bytes())?;
        match here {
            Some(record) => Ok(record.map(|r| Served {
                value: OrderView::new(order_id, r),
                by: self.instance_id.clone(),
            })),
            None => {
                self.remote(
                    &self.orders_topic,
                    partition,
                    &["orders", order_id],
                    forwarded,
                )
                .await
            }
        }
    }

    /// The committed value under `key` if this instance serves the store's partition:
    /// `Some(None)` when it has no such key; `None` when it does not serve the partition.
    fn local<T: DeserializeOwned>(
        &self,
        store: &str,
        partition: i32,
        key: &[u8],
    ) -> Result<Option<Option<T>>, Failure> {
        let lookup = self
            .live
            .get(store, partition, key)
            .map_err(|e| Failure::unavailable(format!("the {store} store: {e}")))?;
        match lookup {
            Lookup::NotHere => Ok(None),
            Lookup::Found(None) => Ok(Some(None)),
            Lookup::Found(Some(bytes)) => {
                format::decode(&bytes)
                    .map(Some)
                    .map(Some)
                    .map_err(|e| Failure {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        error: format!("the {store} store's value does not decode: {e}"),
                    })
            }
        }
    }

    /// Asks the owner of `topic`'s `partition` for `/<segments>` (once: a forwarded request
    /// that reaches an instance without the partition ends there, with 503).
    async fn remote<T: DeserializeOwned>(
        &self,
        topic: &str,
        partition: i32,
        segments: &[&str],
        forwarded: bool,
    ) -> Result<Option<Served<T>>, Failure> {
        let moving = || {
            Failure::unavailable(format!(
                "partition {partition} of {topic} is not served here now (restoring or moving); try again"
            ))
        };
        if forwarded {
            return Err(moving());
        }
        let owner = self
            .owners
            .owner(topic, partition)
            .await
            .map_err(|e| Failure::unavailable(format!("cannot find the owner: {e:#}")))?
            .ok_or_else(moving)?;
        let mut url = reqwest::Url::parse(&format!("http://{owner}/"))
            .map_err(|e| Failure::unavailable(format!("the owner's address {owner}: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| Failure::unavailable(format!("the owner's address {owner}")))?
            .pop_if_empty()
            .extend(segments);
        let asked = self
            .http
            .get(url)
            .header(FORWARDED, "1")
            .timeout(REMOTE_TIMEOUT)
            .send()
            .await;
        let response = match asked {
            Ok(response) => response,
            Err(e) => {
                self.owners.forget().await;
                return Err(Failure::unavailable(format!(
                    "the owner of partition {partition} of {topic} ({owner}) does not answer: {e}"
                )));
            }
        };
        match response.status() {
            reqwest::StatusCode::OK => {
                let by = response
                    .headers()
                    .get(SERVED_BY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(&owner)
                    .to_owned();
                let value = response.json::<T>().await.map_err(|e| {
                    Failure::unavailable(format!("the owner's answer ({owner}): {e}"))
                })?;
                Ok(Some(Served { value, by }))
            }
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            status => {
                // It no longer owns it, or cannot answer: ask Kafka afresh next time.
                self.owners.forget().await;
                Err(Failure::unavailable(format!(
                    "the owner of partition {partition} of {topic} ({owner}) answered {status}"
                )))
            }
        }
    }

    /// Publishes `event` to `orders`, keyed by its id, and waits for Kafka's acknowledgement.
    async fn publish(&self, event: &schemas::OrderCreated) -> Result<(), Failure> {
        let payload = self
            .codec
            .encode(event)
            .await
            .map_err(|e| Failure::unavailable(format!("cannot encode the order: {e}")))?;
        let record = FutureRecord::to(&self.orders_topic)
            .key(event.order_id.as_bytes())
            .payload(&payload);
        self.producer
            .send(record, REMOTE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| Failure::unavailable(format!("cannot publish the order: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_paths_are_percent_encoded() {
        assert_eq!(order_path("o-1"), "/orders/o-1");
        assert_eq!(order_path("a b/c"), "/orders/a%20b%2Fc");
    }

    #[test]
    fn the_openapi_description_parses_and_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("OpenAPI is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for (path, method) in [
            ("/stock/{sku}", "get"),
            ("/orders/{order_id}", "get"),
            ("/orders", "post"),
        ] {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is described"
            );
        }
    }
}
