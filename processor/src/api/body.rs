//! What the HTTP API reads and answers, as plain data: a `POST /orders` body checked field by
//! field (a refusal names the field, as `lines[1].quantity`), and the JSON shapes of a sku's
//! stock and of an order, made from the store values. Nothing here talks to Kafka or a store.

use serde::Serialize;
use serde_json::Value;

use schemas::{OrderCreated, OrderLine, RejectedLine};

use crate::readmodel::reason_name;
use crate::topology::inventory::SkuRecord;
use crate::topology::order::{self, OrderRecord, OrderStatus};

/// The most lines an order placed through the API may have: what the rules accept.
pub const MAX_LINES: usize = order::MAX_LINES;
/// The longest order id, customer id or sku the API takes, in bytes (the rules dead-letter
/// ids over [`order::MAX_ID_BYTES`]; the API is stricter).
pub const MAX_ID_BYTES: usize = 200;

/// A request refused, and the field that made it so (`None`: the body as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Refusal {
    fn field(field: impl Into<String>, error: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            error: format!("{field}: {}", error.into()),
            field: Some(field),
        }
    }
}

/// A `POST /orders` body: `{"order_id"?, "customer_id", "currency", "lines": [{"sku",
/// "quantity", "unit_price_cents"}]}`. Without an order id the API makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: Option<String>,
    pub customer_id: String,
    pub currency: String,
    pub lines: Vec<OrderLine>,
}

impl NewOrder {
    /// Parses and checks a body; the refusal names the first field that is wrong.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        let value: Value = serde_json::from_slice(body).map_err(|e| Refusal {
            error: format!("the body is not JSON: {e}"),
            field: None,
        })?;
        let Value::Object(object) = &value else {
            return Err(Refusal {
                error: "the body must be a JSON object".into(),
                field: None,
            });
        };
        if let Some(unknown) = object
            .keys()
            .find(|k| !["order_id", "customer_id", "currency", "lines"].contains(&k.as_str()))
        {
            return Err(Refusal::field(unknown.as_str(), "unknown field"));
        }
        let order_id = match object.get("order_id") {
            None | Some(Value::Null) => None,
            Some(_) => Some(id(&value, "order_id")?),
        };
        let customer_id = id(&value, "customer_id")?;
        let currency = string(&value, "currency")?;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Refusal::field(
                "currency",
                "must be an ISO 4217 code (three capital letters)",
            ));
        }
        let lines = match value.get("lines") {
            Some(Value::Array(lines)) => lines,
            None => return Err(Refusal::field("lines", "is missing")),
            Some(_) => return Err(Refusal::field("lines", "must be an array")),
        };
        if lines.is_empty() {
            return Err(Refusal::field("lines", "must have at least one line"));
        }
        if lines.len() > MAX_LINES {
            return Err(Refusal::field(
                "lines",
                format!("has {} lines; at most {MAX_LINES}", lines.len()),
            ));
        }
        let lines = lines
            .iter()
            .enumerate()
            .map(|(i, line)| parse_line(line, &format!("lines[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let order = Self {
            order_id,
            customer_id,
            currency,
            lines,
        };
        // What the processor would reject as invalid is refused here, with its reason.
        if let Some(reason) = order::validate(&order.event("checked", 0)) {
            return Err(Refusal::field("lines", reason));
        }
        Ok(order)
    }

    /// The event to publish, for order `order_id` created at `created_at`.
    pub fn event(&self, order_id: &str, created_at: i64) -> OrderCreated {
        OrderCreated {
            order_id: order_id.to_owned(),
            customer_id: self.customer_id.clone(),
            created_at,
            currency: self.currency.clone(),
            lines: self.lines.clone(),
        }
    }
}

fn parse_line(line: &Value, at: &str) -> Result<OrderLine, Refusal> {
    let Value::Object(fields) = line else {
        return Err(Refusal::field(at, "must be an object"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["sku", "quantity", "unit_price_cents"].contains(&k.as_str()))
    {
        return Err(Refusal::field(format!("{at}.{unknown}"), "unknown field"));
    }
    let sku = id(line, "sku").map_err(|r| prefixed(r, at))?;
    let quantity = integer(line, "quantity").map_err(|r| prefixed(r, at))?;
    let quantity = i32::try_from(quantity)
        .ok()
        .filter(|q| *q > 0)
        .ok_or_else(|| {
            Refusal::field(
                format!("{at}.quantity"),
                format!("must be between 1 and {}", i32::MAX),
            )
        })?;
    let unit_price_cents = integer(line, "unit_price_cents").map_err(|r| prefixed(r, at))?;
    if unit_price_cents < 0 {
        return Err(Refusal::field(
            format!("{at}.unit_price_cents"),
            "must not be negative",
        ));
    }
    Ok(OrderLine {
        sku,
        quantity,
        unit_price_cents,
    })
}

/// `refusal` of a field of the object at `at`.
fn prefixed(refusal: Refusal, at: &str) -> Refusal {
    let field = format!("{at}.{}", refusal.field.unwrap_or_default());
    let error = refusal
        .error
        .split_once(": ")
        .map_or(refusal.error.clone(), |(_, e)| e.to_owned());
    Refusal::field(field, error)
}

fn string(object: &Value, field: &str) -> Result<String, Refusal> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(Refusal::field(field, "is missing")),
        Some(_) => Err(Refusal::field(field, "must be a string")),
    }
}

/// A non-empty string of at most [`MAX_ID_BYTES`] bytes, without control characters.
fn id(object: &Value, field: &str) -> Result<String, Refusal> {
    let s = string(object, field)?;
    if s.trim().is_empty() {
        return Err(Refusal::field(field, "must not be empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(Refusal::field(
            field,
            format!("is {} bytes long; at most {MAX_ID_BYTES}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Refusal::field(field, "must not contain control characters"));
    }
    Ok(s)
}

fn integer(object: &Value, field: &str) -> Result<i64, Refusal> {
    match object.get(field) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| Refusal::field(field, "must be an integer")),
        None | Some(Value::Null) => Err(Refusal::field(field, "is missing")),
        Some(_) => Err(Refusal::field(field, "must be an integer")),
    }
}

/// A sku's stock, as `GET /stock/{sku}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StockView {
    pub sku: String,
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held by orders.
    pub reserved: i64,
    pub product_name: Option<String>,
    pub unit_price_cents: Option<i64>,
    /// When the stock last changed, ms since the epoch.
    pub updated_at: i64,
}

impl StockView {
    pub fn new(sku: &str, record: SkuRecord) -> Self {
        Self {
            sku: sku.to_owned(),
            available: record.available,
            reserved: record.reserved,
            product_name: record.product_name,
            unit_price_cents: record.unit_price_cents,
            updated_at: record.updated_at,
        }
    }
}

/// An order, as `GET /orders/{order_id}` (and `POST /orders`) answers it. `status` is
/// `PENDING`, `CONFIRMED` or `REJECTED`, and `reason` one of the contract's rejection reasons,
/// spelled as in the read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub status: String,
    pub customer_id: String,
    pub currency: String,
    /// When it was created, ms since the epoch.
    pub created_at: i64,
    pub total_cents: i64,
    pub lines: Vec<OrderLine>,
    /// When it was decided, ms since the epoch (`None` while pending).
    pub decided_at: Option<i64>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The lines that made a rejection, with what was asked and what was there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_lines: Vec<RejectedLine>,
}

impl OrderView {
    pub fn new(order_id: &str, record: OrderRecord) -> Self {
        let (status, reason, message, rejected_lines) = match record.status {
            OrderStatus::Pending { .. } => ("PENDING", None, None, Vec::new()),
            OrderStatus::Confirmed => ("CONFIRMED", None, None, Vec::new()),
            OrderStatus::Rejected {
                reason,
                message,
                lines,
            } => (
                "REJECTED",
                Some(reason_name(reason).to_owned()),
                Some(message),
                lines,
            ),
        };
        Self {
            order_id: order_id.to_owned(),
            status: status.to_owned(),
            customer_id: record.customer_id,
            currency: record.currency,
            created_at: record.created_at,
            total_cents: record.total_cents,
            lines: record.lines,
            decided_at: record.decided_at,
            reason,
            message,
            rejected_lines,
        }
    }

    pub fn is_decided(&self) -> bool {
        self.status != "PENDING"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> Refusal {
        NewOrder::parse(body.as_bytes()).expect_err("refused")
    }

    #[test]
    fn a_good_body_parses_with_or_without_an_order_id() {
        let order = NewOrder::parse(
            br#"{"customer_id": "c-1", "currency": "EUR",
                 "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}]}"#,
        )
        .expect("parses");
        assert_eq!(order.order_id, None);
        assert_eq!(order.lines.len(), 1);
        assert_eq!(order.lines[0].quantity, 2);
        let event = order.event("o-9", 5);
        assert_eq!((event.order_id.as_str(), event.created_at), ("o-9", 5));
        let with_id = NewOrder::parse(
            br#"{"order_id": "o-1", "customer_id": "c-1", "currency": "EUR",
                 "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 0}]}"#,
        )
        .expect("parses");
        assert_eq!(with_id.order_id.as_deref(), Some("o-1"));
    }

    #[test]
    fn every_refusal_names_its_field() {
        let line = r#"{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}"#;
        let order = |fields: &str| format!(r#"{{"customer_id": "c-1", {fields}}}"#);
        let cases = [
            ("not json".to_owned(), None),
            ("[1, 2]".to_owned(), None),
            (
                format!(r#"{{"currency": "EUR", "lines": [{line}]}}"#),
                Some("customer_id"),
            ),
            (
                order(&format!(r#""currency": "euro", "lines": [{line}]"#)),
                Some("currency"),
            ),
            (order(r#""currency": "EUR""#), Some("lines")),
            (order(r#""currency": "EUR", "lines": []"#), Some("lines")),
            (
                order(&format!(
                    r#""order_id": "", "currency": "EUR", "lines": [{line}]"#
                )),
                Some("order_id"),
            ),
            (
                order(&format!(
                    r#""currency": "EUR", "lines": [{line}], "coupon": "X""#
                )),
                Some("coupon"),
            ),
            (
                order(&format!(
                    r#""currency": "EUR", "lines": [{line}, {{"sku": "SKU-2", "quantity": 0, "unit_price_cents": 1}}]"#
                )),
                Some("lines[1].quantity"),
            ),
            (
                order(
                    r#""currency": "EUR", "lines": [{"sku": "SKU-2", "quantity": 1, "unit_price_cents": -1}]"#,
                ),
                Some("lines[0].unit_price_cents"),
            ),
            (
                order(r#""currency": "EUR", "lines": [{"quantity": 1, "unit_price_cents": 1}]"#),
                Some("lines[0].sku"),
            ),
            (
                order(&format!(
                    r#""order_id": "{}", "currency": "EUR", "lines": [{line}]"#,
                    "o".repeat(order::MAX_ID_BYTES + 1)
                )),
                Some("order_id"),
            ),
            (
                order(&format!(
                    r#""currency": "EUR", "lines": [{{"sku": "{}", "quantity": 1, "unit_price_cents": 1}}]"#,
                    "S".repeat(order::MAX_ID_BYTES + 1)
                )),
                Some("lines[0].sku"),
            ),
            (
                order(
                    r#""currency": "EUR", "lines": [{"sku": "S", "quantity": "2", "unit_price_cents": 1}]"#,
                ),
                Some("lines[0].quantity"),
            ),
            (
                order(
                    r#""currency": "EUR", "lines": [{"sku": "S", "quantity": 3000000000, "unit_price_cents": 1}]"#,
                ),
                Some("lines[0].quantity"),
            ),
            (
                order(&format!(
                    r#""currency": "EUR", "lines": [{{"sku": "{}", "quantity": 1, "unit_price_cents": 1}}]"#,
                    "S".repeat(MAX_ID_BYTES + 1)
                )),
                Some("lines[0].sku"),
            ),
            (
                // The total overflows: the processor would reject it as invalid.
                order(&format!(
                    r#""currency": "EUR", "lines": [{{"sku": "S", "quantity": 2147483647, "unit_price_cents": {}}}]"#,
                    i64::MAX / 2
                )),
                Some("lines"),
            ),
        ];
        for (body, field) in cases {
            let refused = refusal(&body);
            assert_eq!(refused.field.as_deref(), field, "{body}: {refused:?}");
            if let Some(field) = field {
                assert!(refused.error.starts_with(field), "{refused:?}");
            }
        }
    }

    #[test]
    fn orders_read_as_the_read_model_spells_them() {
        let record = OrderRecord {
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            created_at: 1,
            lines: vec![OrderLine {
                sku: "SKU-1".into(),
                quantity: 3,
                unit_price_cents: 10,
            }],
            total_cents: 30,
            status: OrderStatus::Rejected {
                reason: schemas::RejectionReason::InsufficientStock,
                message: "short".into(),
                lines: vec![RejectedLine {
                    sku: "SKU-1".into(),
                    requested: 3,
                    available: Some(1),
                }],
            },
            decided_at: Some(2),
            time: Some(1),
        };
        let view = OrderView::new("o-1", record.clone());
        assert!(view.is_decided());
        assert_eq!(
            (view.status.as_str(), view.reason.as_deref()),
            ("REJECTED", Some("INSUFFICIENT_STOCK"))
        );
        assert_eq!(view.rejected_lines.len(), 1);
        let pending = OrderView::new(
            "o-2",
            OrderRecord {
                status: OrderStatus::Pending {
                    results: vec![None],
                },
                decided_at: None,
                ..record
            },
        );
        assert!(!pending.is_decided());
        let json = serde_json::to_value(&pending).expect("serializes");
        assert_eq!(json["status"], "PENDING");
        assert!(json.get("rejected_lines").is_none());
    }
}
