//! The product catalog: the four sample products of the original take-home systems, plus any
//! number of synthetic SKUs; the `InventoryAdjusted(INITIAL)` events that stock them, and the
//! restocks and corrections that adjust them later.

use schemas::{AdjustmentMode, AdjustmentReason, InventoryAdjusted};

/// A product that orders can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub unit_price_cents: i64,
    /// The stock `generator seed` gives it.
    pub initial_stock: i64,
}

/// The sample products, with their prices and initial stock.
pub const SAMPLE: [(&str, &str, i64, i64); 4] = [
    ("SKU-KEYBOARD", "Wireless Keyboard", 2999, 0),
    ("SKU-USBC-HUB", "USB-C Hub", 2000, 0),
    ("SKU-MONITOR-STAND", "Monitor Stand", 4550, 1),
    ("SKU-BT-MOUSE", "Bluetooth Mouse", 1525, 2),
];

/// The SKU of synthetic product `i` (0-based).
pub fn synthetic_sku(i: u32) -> String {
    format!("SKU-{i:06}")
}

/// The sample products followed by `synthetic` generated ones, each stocked with
/// `synthetic_stock`. Prices of generated products are fixed by their index, so every run
/// agrees on them.
pub fn catalog(synthetic: u32, synthetic_stock: i64) -> Vec<Product> {
    let sample = SAMPLE.iter().map(|&(sku, name, price, stock)| Product {
        sku: sku.to_owned(),
        name: name.to_owned(),
        unit_price_cents: price,
        initial_stock: stock,
    });
    let generated = (0..synthetic).map(|i| synthetic_product(i, synthetic_stock));
    sample.chain(generated).collect()
}

/// Synthetic product `i` (0-based), stocked with `stock`.
fn synthetic_product(i: u32, stock: i64) -> Product {
    Product {
        sku: synthetic_sku(i),
        name: format!("Synthetic product {i}"),
        unit_price_cents: 199 + i64::from(i % 97) * 100,
        initial_stock: stock,
    }
}

/// The catalog's product `sku`: a sample product or a synthetic one (`SKU-` and six digits),
/// whatever the number of synthetic SKUs seeded; `None` for any other SKU.
pub fn find(sku: &str) -> Option<Product> {
    if let Some(&(sku, name, price, stock)) = SAMPLE.iter().find(|(s, ..)| *s == sku) {
        return Some(Product {
            sku: sku.to_owned(),
            name: name.to_owned(),
            unit_price_cents: price,
            initial_stock: stock,
        });
    }
    let digits = sku.strip_prefix("SKU-")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(|i| synthetic_product(i, 0))
}

/// The adjustment that gives `product` its initial stock. Its id is derived from the SKU, so
/// seeding twice is idempotent for a processor that deduplicates by adjustment id.
pub fn initial_stock(product: &Product, adjusted_at: i64) -> InventoryAdjusted {
    InventoryAdjusted {
        adjustment_id: format!("initial-{}", product.sku),
        sku: product.sku.clone(),
        mode: AdjustmentMode::Absolute,
        quantity: product.initial_stock,
        reason: AdjustmentReason::Initial,
        adjusted_at,
        product_name: Some(product.name.clone()),
        unit_price_cents: Some(product.unit_price_cents),
    }
}

/// How an adjustment changes a SKU's available stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockChange {
    /// Add this many units (negative: take them away, down to zero at most).
    Delta(i64),
    /// Set the available stock to this many units.
    Set(i64),
}

/// Why an adjustment cannot be published.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdjustmentError {
    #[error("the SKU must not be empty")]
    EmptySku,
    #[error("--delta 0 changes nothing")]
    ZeroDelta,
    #[error(
        "a restock adds stock: --delta must be positive, got {0} (take stock away with --reason correction)"
    )]
    NegativeRestock(i64),
    #[error("--set must be 0 or more, got {0}")]
    NegativeLevel(i64),
    #[error("the initial stock is `generator seed`'s: adjust with restock or correction")]
    Initial,
}

/// A restock or a correction of `sku`, with `id`, carrying the catalog's name and price when
/// the SKU is in it ([`find`]). Refuses what the processor would not take (a negative level)
/// and what is surely a slip (a zero delta, a restock that takes stock away).
pub fn adjustment(
    id: String,
    sku: &str,
    change: StockChange,
    reason: AdjustmentReason,
    adjusted_at: i64,
) -> Result<InventoryAdjusted, AdjustmentError> {
    if sku.is_empty() {
        return Err(AdjustmentError::EmptySku);
    }
    if reason == AdjustmentReason::Initial {
        return Err(AdjustmentError::Initial);
    }
    let (mode, quantity) = match change {
        StockChange::Delta(0) => return Err(AdjustmentError::ZeroDelta),
        StockChange::Delta(n) if n < 0 && reason == AdjustmentReason::Restock => {
            return Err(AdjustmentError::NegativeRestock(n));
        }
        StockChange::Delta(n) => (AdjustmentMode::Delta, n),
        StockChange::Set(n) if n < 0 => return Err(AdjustmentError::NegativeLevel(n)),
        StockChange::Set(n) => (AdjustmentMode::Absolute, n),
    };
    let product = find(sku);
    Ok(InventoryAdjusted {
        adjustment_id: id,
        sku: sku.to_owned(),
        mode,
        quantity,
        reason,
        adjusted_at,
        product_name: product.as_ref().map(|p| p.name.clone()),
        unit_price_cents: product.map(|p| p.unit_price_cents),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_products_come_first_with_their_stock() {
        let products = catalog(3, 50);
        assert_eq!(products.len(), 7);
        let stand = &products[2];
        assert_eq!(
            (
                stand.name.as_str(),
                stand.unit_price_cents,
                stand.initial_stock
            ),
            ("Monitor Stand", 4550, 1)
        );
        assert_eq!(products[4].sku, "SKU-000000");
        assert!(products[4..].iter().all(|p| p.initial_stock == 50));
    }

    #[test]
    fn initial_stock_is_absolute_and_idempotent_by_id() {
        let mouse = &catalog(0, 0)[3];
        let a = initial_stock(mouse, 1);
        let b = initial_stock(mouse, 2);
        assert_eq!(a.adjustment_id, b.adjustment_id);
        assert_eq!(
            (a.mode, a.quantity, a.reason),
            (AdjustmentMode::Absolute, 2, AdjustmentReason::Initial)
        );
    }

    #[test]
    fn find_knows_samples_and_synthetic_skus() {
        assert_eq!(find("SKU-BT-MOUSE").map(|p| p.unit_price_cents), Some(1525));
        let synthetic = find("SKU-000042").expect("a synthetic sku");
        assert_eq!(synthetic, synthetic_product(42, 0));
        assert_eq!(synthetic, catalog(100, 0)[4 + 42]);
        for unknown in ["SKU-42", "SKU-00004x", "SKU-0000421", "PEAR", ""] {
            assert_eq!(find(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn adjustments_carry_the_change_and_the_catalog() {
        let restock = adjustment(
            "a-1".into(),
            "SKU-BT-MOUSE",
            StockChange::Delta(5),
            AdjustmentReason::Restock,
            7,
        )
        .expect("a restock");
        assert_eq!(
            restock,
            InventoryAdjusted {
                adjustment_id: "a-1".into(),
                sku: "SKU-BT-MOUSE".into(),
                mode: AdjustmentMode::Delta,
                quantity: 5,
                reason: AdjustmentReason::Restock,
                adjusted_at: 7,
                product_name: Some("Bluetooth Mouse".into()),
                unit_price_cents: Some(1525),
            }
        );
        let count = adjustment(
            "a-2".into(),
            "SKU-NEW",
            StockChange::Set(0),
            AdjustmentReason::Correction,
            7,
        )
        .expect("a correction");
        assert_eq!((count.mode, count.quantity), (AdjustmentMode::Absolute, 0));
        assert_eq!((count.product_name, count.unit_price_cents), (None, None));
        let shrink = adjustment(
            "a-3".into(),
            "SKU-000001",
            StockChange::Delta(-2),
            AdjustmentReason::Correction,
            7,
        )
        .expect("a negative correction");
        assert_eq!(shrink.quantity, -2);
    }

    #[test]
    fn slips_are_refused() {
        let refused = |sku: &str, change, reason| {
            adjustment("a".into(), sku, change, reason, 0).expect_err("refused")
        };
        use AdjustmentReason::{Correction, Initial, Restock};
        assert_eq!(
            refused("S", StockChange::Delta(0), Correction),
            AdjustmentError::ZeroDelta
        );
        assert_eq!(
            refused("S", StockChange::Delta(-3), Restock),
            AdjustmentError::NegativeRestock(-3)
        );
        assert_eq!(
            refused("S", StockChange::Set(-1), Correction),
            AdjustmentError::NegativeLevel(-1)
        );
        assert_eq!(
            refused("", StockChange::Set(1), Correction),
            AdjustmentError::EmptySku
        );
        assert_eq!(
            refused("S", StockChange::Set(1), Initial),
            AdjustmentError::Initial
        );
    }
}
