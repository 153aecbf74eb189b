//! The product catalog: the four sample products of the original take-home systems, plus any
//! number of synthetic SKUs, and the `InventoryAdjusted(INITIAL)` events that stock them.

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
    let generated = (0..synthetic).map(|i| Product {
        sku: synthetic_sku(i),
        name: format!("Synthetic product {i}"),
        unit_price_cents: 199 + i64::from(i % 97) * 100,
        initial_stock: synthetic_stock,
    });
    sample.chain(generated).collect()
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
}
