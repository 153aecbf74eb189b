//! The HTTP API against the real services, with two instances: every sku's stock and an
//! order's state from either instance (each answering from the owner's store, forwarding
//! when it is not the owner), `POST /orders?wait=5s` answering with the decision, a known id
//! refused, bad bodies refused with the field named and nothing published, and the OpenAPI
//! description served.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use processor::api::SERVED_BY;
use processor::api::body::{OrderView, StockView};
use serde_json::{Value, json};
use support::{MINUTE, ProcessorChild, World, initial_stock};

/// An answer: status, the instance that served it, the JSON body.
struct Answer {
    status: u16,
    served_by: Option<String>,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.expect("a JSON body");
    Answer {
        status,
        served_by,
        body,
    }
}

async fn get(http: &reqwest::Client, at: SocketAddr, path: &str) -> Answer {
    answer(
        http.get(format!("http://{at}{path}"))
            .send()
            .await
            .expect("the API answers"),
    )
    .await
}

async fn post(http: &reqwest::Client, at: SocketAddr, path: &str, body: &str) -> Answer {
    answer(
        http.post(format!("http://{at}{path}"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("the API answers"),
    )
    .await
}

/// The instance id an instance reports on `/status`.
async fn instance_id(http: &reqwest::Client, child: &ProcessorChild) -> String {
    let status = get(http, child.metrics, "/status").await;
    status.body["instance_id"]
        .as_str()
        .expect("an instance id")
        .to_owned()
}

/// Asks `path` of `at` until it answers 200 (a task between owners answers 503 for a moment).
async fn get_ok(http: &reqwest::Client, at: SocketAddr, path: &str) -> Answer {
    let started = Instant::now();
    loop {
        let answer = get(http, at, path).await;
        if answer.status == 200 {
            return answer;
        }
        assert!(
            answer.status == 503 && started.elapsed() < MINUTE,
            "GET {path} at {at}: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_api_answers_from_either_instance_and_places_orders() {
    let world = World::new("api").await;
    world.seed(10, 1000).await;
    let (state_a, state_b) = (
        tempfile::tempdir().expect("state dir"),
        tempfile::tempdir().expect("state dir"),
    );
    let mut a = world.spawn_processor("a", state_a.path(), &[]);
    a.wait_ready(MINUTE).await;
    let mut b = world.spawn_processor("b", state_b.path(), &[]);
    b.wait_ready(MINUTE).await;
    // Until the rebalance that gives b its share has settled: each task owned once, by both.
    a.wait_shared_with(&b, 8.0).await;
    a.wait_ready(MINUTE).await;
    b.wait_ready(MINUTE).await;
    let http = reqwest::Client::new();
    let ids: BTreeSet<String> = [instance_id(&http, &a).await, instance_id(&http, &b).await]
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 2, "two instances");

    // Every sku's stock, from either instance, is the seed's, served by its owner's store:
    // both instances' stores answer, each to both instances.
    let stock = initial_stock(10, 1000);
    let mut served = HashMap::<(SocketAddr, String), usize>::new();
    for (sku, units) in &stock {
        for at in [a.metrics, b.metrics] {
            let answer = get_ok(&http, at, &format!("/stock/{sku}")).await;
            let view: StockView = serde_json::from_value(answer.body).expect("a stock view");
            assert_eq!((&view.sku, view.available, view.reserved), (sku, *units, 0));
            let by = answer.served_by.expect("the serving instance is named");
            assert!(ids.contains(&by), "{by} is one of {ids:?}");
            *served.entry((at, by)).or_default() += 1;
        }
    }
    for at in [a.metrics, b.metrics] {
        for id in &ids {
            assert!(
                served.get(&(at, id.clone())).is_some_and(|n| *n > 0),
                "{at} answered with {id}'s store for some sku: {served:?}"
            );
        }
        let unknown = get(&http, at, "/stock/NO-SUCH-SKU").await;
        assert_eq!(unknown.status, 404, "{}", unknown.body);
        assert!(unknown.body["error"].is_string());
        let unknown = get(&http, at, "/orders/no-such-order").await;
        assert_eq!(unknown.status, 404, "{}", unknown.body);
    }

    // Orders placed through a, each decided within the wait, and read back from b.
    let (sku, units) = stock
        .iter()
        .min_by_key(|(sku, _)| sku.as_str())
        .map(|(s, u)| (s.clone(), *u))
        .expect("a seeded sku");
    let placed = |order_id: &str, quantity: i64| {
        json!({
            "order_id": order_id,
            "customer_id": "customer-api",
            "currency": "EUR",
            "lines": [{"sku": sku, "quantity": quantity, "unit_price_cents": 250}],
        })
        .to_string()
    };
    let orders_high = || async {
        testkit::kafka::high_watermarks(&world.bootstrap, &[world.topics.orders.as_str()])
            .values()
            .sum::<i64>()
    };
    let before = orders_high().await;
    let confirmed = post(
        &http,
        a.metrics,
        "/orders?wait=5s",
        &placed("api-order-1", 3),
    )
    .await;
    assert_eq!(confirmed.status, 201, "{}", confirmed.body);
    assert!(
        confirmed
            .served_by
            .as_ref()
            .is_some_and(|by| ids.contains(by)),
        "the decision was read from an instance's store: {:?}",
        confirmed.served_by
    );
    let view: OrderView = serde_json::from_value(confirmed.body).expect("an order view");
    assert_eq!(
        (
            view.order_id.as_str(),
            view.status.as_str(),
            view.total_cents
        ),
        ("api-order-1", "CONFIRMED", 750)
    );
    let rejected = post(
        &http,
        a.metrics,
        "/orders?wait=5s",
        &placed("api-order-2", units + 1),
    )
    .await;
    assert_eq!(rejected.status, 201, "{}", rejected.body);
    assert_eq!(
        (&rejected.body["status"], &rejected.body["reason"]),
        (&json!("REJECTED"), &json!("INSUFFICIENT_STOCK"))
    );
    for at in [a.metrics, b.metrics] {
        let order = get_ok(&http, at, "/orders/api-order-1").await;
        assert_eq!(order.body["status"], "CONFIRMED", "{}", order.body);
        let order = get_ok(&http, at, "/orders/api-order-2").await;
        assert_eq!(order.body["status"], "REJECTED", "{}", order.body);
        let stocked = get_ok(&http, at, &format!("/stock/{sku}")).await;
        assert_eq!(
            (&stocked.body["available"], &stocked.body["reserved"]),
            (&json!(units - 3), &json!(3)),
            "the confirmed order's 3 units are reserved"
        );
    }

    // Without a wait: 202 and where to look; the order is decided soon after.
    let accepted = http
        .post(format!("http://{}/orders", b.metrics))
        .header("content-type", "application/json")
        .body(
            json!({
                "customer_id": "customer-api",
                "currency": "EUR",
                "lines": [{"sku": sku, "quantity": 1, "unit_price_cents": 250}],
            })
            .to_string(),
        )
        .send()
        .await
        .expect("the API answers");
    assert_eq!(accepted.status().as_u16(), 202);
    let location = accepted
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_owned();
    let body: Value = accepted.json().await.expect("JSON");
    let made_id = body["order_id"].as_str().expect("an order id made");
    assert_eq!(location, format!("/orders/{made_id}"));
    assert_eq!(body["status"], "PENDING");
    // (Unknown, 404, until its order task has decided and committed it.)
    let started = Instant::now();
    loop {
        let order = get(&http, a.metrics, &location).await;
        if order.status == 200 && order.body["status"] == "CONFIRMED" {
            break;
        }
        assert!(
            started.elapsed() < MINUTE,
            "{made_id} is confirmed: {} {}",
            order.status,
            order.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(orders_high().await, before + 3, "three orders published");

    // Refused: a known id (409), and bad bodies (400, the field named); none is published.
    let again = post(&http, b.metrics, "/orders", &placed("api-order-1", 1)).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.body["order"]["status"], "CONFIRMED");
    let line = json!({"sku": sku, "quantity": 1, "unit_price_cents": 1});
    for (body, field) in [
        ("{not json".to_owned(), None),
        (
            json!({"currency": "EUR", "lines": [line]}).to_string(),
            Some("customer_id"),
        ),
        (
            json!({"customer_id": "c", "currency": "EUR", "lines": []}).to_string(),
            Some("lines"),
        ),
        (
            json!({"customer_id": "c", "currency": "EUR",
                   "lines": [line, {"sku": sku, "quantity": -2, "unit_price_cents": 1}]})
            .to_string(),
            Some("lines[1].quantity"),
        ),
    ] {
        for at in [a.metrics, b.metrics] {
            let refused = post(&http, at, "/orders?wait=1s", &body).await;
            assert_eq!(refused.status, 400, "{body}: {}", refused.body);
            assert_eq!(
                refused.body["field"].as_str(),
                field,
                "{body}: {}",
                refused.body
            );
        }
    }
    let bad_wait = post(&http, a.metrics, "/orders?wait=soon", &placed("x", 1)).await;
    assert_eq!(
        (bad_wait.status, bad_wait.body["field"].as_str()),
        (400, Some("wait"))
    );
    assert_eq!(
        orders_high().await,
        before + 3,
        "nothing refused was published"
    );

    // One outcome per order placed, on the output topics.
    let outcomes = world.outcomes(3, MINUTE).await;
    let per_order = outcomes.per_order();
    assert_eq!(per_order.len(), 3, "{per_order:?}");
    assert!(per_order.values().all(|n| *n == 1), "{per_order:?}");

    let openapi = get(&http, a.metrics, "/openapi.json").await;
    assert_eq!(openapi.status, 200);
    assert!(openapi.body["paths"]["/orders"]["post"].is_object());

    // The API's server stops with the processor.
    for child in [&mut a, &mut b] {
        child.signal("TERM");
        let status = child.wait_exit(MINUTE).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exits 0 on SIGTERM: {status:?}",
            child.name
        );
    }
}
