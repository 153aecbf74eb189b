//! The codec and the registry administration against a real schema registry.

use schemas::codec::CodecError;
use schemas::events::samples;
use schemas::registry::{Compatibility, RegistryError};
use schemas::topics::value_subject;
use schemas::{Codec, Contract, InventoryAdjusted, OrderCreated, Registry, Topics};
use testkit::{stack, unique};

fn prefixed_topics() -> Topics {
    Topics::with_prefix(&format!("{}-", unique("schemas")))
}

async fn round_trip<C: Contract + PartialEq + std::fmt::Debug>(
    codec: &Codec,
    registry_ids: &[u32],
    value: C,
) {
    let bytes = codec.encode(&value).await.expect("encodes");
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4-byte id"));
    assert!(
        registry_ids.contains(&id),
        "schema id {id} is one the registry gave: {registry_ids:?}"
    );
    let back: C = codec.decode(&bytes).await.expect("decodes");
    assert_eq!(back, value);
    // The first record of a schema id is decoded by the converter, the next ones (the id now
    // known to be this binary's schema) by the codec's own reader: both must read the value.
    let back: C = codec.decode(&bytes).await.expect("decodes again");
    assert_eq!(
        back, value,
        "the codec's reader reads what the converter read"
    );
    // The first record of a contract goes through the converter (which registers the schema),
    // the next ones through the codec's own writer: both must frame the same bytes.
    let again = codec.encode(&value).await.expect("encodes again");
    assert_eq!(
        again, bytes,
        "the codec's writer frames what the converter framed"
    );
}

#[tokio::test]
async fn every_contract_round_trips_through_the_registry() {
    let stack = stack().await;
    let topics = prefixed_topics();
    let registry = Registry::new(&stack.schema_registry_url).expect("registry client");
    let registered = registry.register_all(&topics).await.expect("registers");
    assert_eq!(registered.len(), 5);
    assert!(
        registered
            .iter()
            .all(|r| r.change == Compatibility::NewSubject)
    );
    let ids: Vec<u32> = registered.iter().map(|r| r.id).collect();

    let codec = Codec::new(&stack.schema_registry_url, &topics).expect("codec");
    round_trip(&codec, &ids, samples::order_created()).await;
    round_trip(&codec, &ids, samples::inventory_adjusted()).await;
    round_trip(&codec, &ids, samples::inventory_updated()).await;
    round_trip(&codec, &ids, samples::order_confirmed()).await;
    round_trip(&codec, &ids, samples::order_rejected()).await;

    let subjects = registry.subjects().await.expect("lists subjects");
    for topic in topics.avro_topics() {
        assert!(
            subjects.contains(&value_subject(topic)),
            "{topic}-value is listed"
        );
    }
    // Registering again changes nothing.
    let again = registry
        .register_all(&topics)
        .await
        .expect("registers again");
    assert!(
        again
            .iter()
            .all(|r| matches!(r.change, Compatibility::Unchanged { version: 1 })),
        "{again:?}"
    );
}

#[tokio::test]
async fn bad_bytes_and_other_contracts_are_poison() {
    let stack = stack().await;
    let topics = prefixed_topics();
    let codec = Codec::new(&stack.schema_registry_url, &topics).expect("codec");

    let garbage = codec
        .decode::<OrderCreated>(b"not avro at all")
        .await
        .expect_err("garbage");
    assert!(garbage.is_poison() && !garbage.is_retriable(), "{garbage}");

    let unknown_id = codec
        .decode::<OrderCreated>(&[0, 0x7f, 0xff, 0xff, 0xf0, 2, 3])
        .await
        .expect_err("unknown id");
    assert!(unknown_id.is_poison(), "{unknown_id}");

    let adjustment = codec
        .encode(&samples::inventory_adjusted())
        .await
        .expect("encodes");
    match codec.decode::<OrderCreated>(&adjustment).await {
        Err(CodecError::WrongContract { expected, found }) => {
            assert_eq!(expected, OrderCreated::FULL_NAME);
            assert_eq!(found, InventoryAdjusted::FULL_NAME);
        }
        other => panic!("expected a wrong-contract error, got {other:?}"),
    }

    // A truncated body of a known schema, through the converter and then (the id known to be
    // this binary's schema once a whole record was decoded) through the codec's own reader.
    let whole = codec
        .encode(&samples::order_created())
        .await
        .expect("encodes");
    let mut truncated = whole.clone();
    truncated.truncate(9);
    let error = codec
        .decode::<OrderCreated>(&truncated)
        .await
        .expect_err("truncated");
    assert!(error.is_poison(), "{error}");
    codec
        .decode::<OrderCreated>(&whole)
        .await
        .expect("a whole record decodes");
    let error = codec
        .decode::<OrderCreated>(&truncated)
        .await
        .expect_err("truncated, read directly");
    assert!(error.is_poison(), "{error}");
}

#[tokio::test]
async fn an_incompatible_change_is_refused_naming_the_field() {
    let stack = stack().await;
    let topics = prefixed_topics();
    let registry = Registry::new(&stack.schema_registry_url).expect("registry client");
    registry.register_all(&topics).await.expect("registers");
    let subject = value_subject(&topics.orders);

    // A new field without a default: readers of the new schema cannot read old orders.
    let incompatible = OrderCreated::SCHEMA.replacen(
        r#"{"name": "currency""#,
        r#"{"name": "coupon_code", "type": "string"}, {"name": "currency""#,
        1,
    );
    match registry.check(&subject, &incompatible).await {
        Err(RegistryError::Incompatible {
            subject: s, reason, ..
        }) => {
            assert_eq!(s, subject);
            assert!(
                reason.contains("coupon_code"),
                "the reason names the field: {reason}"
            );
        }
        other => panic!("expected the change to be refused, got {other:?}"),
    }
    assert!(
        registry.register(&subject, &incompatible).await.is_err(),
        "register refuses it too"
    );

    // The same field with a default is a compatible evolution.
    let compatible = OrderCreated::SCHEMA.replacen(
        r#"{"name": "currency""#,
        r#"{"name": "coupon_code", "type": ["null", "string"], "default": null}, {"name": "currency""#,
        1,
    );
    assert_eq!(
        registry.check(&subject, &compatible).await.expect("checks"),
        Compatibility::Compatible { version: 2 }
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_one_clear_error() {
    let registry = Registry::new("http://127.0.0.1:9/apis/ccompat/v7").expect("registry client");
    let error = registry
        .ping()
        .await
        .expect_err("nothing listens on port 9");
    assert!(
        matches!(error, RegistryError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
}
