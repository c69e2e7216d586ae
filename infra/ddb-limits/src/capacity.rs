//! Item sizes and capacity units, exactly as the DynamoDB Developer Guide
//! defines them. Pure arithmetic: no I/O, no clocks, so every rule here is
//! unit-tested against the guide's own examples.
//!
//! Sources:
//! - item sizes: "DynamoDB item sizes and formats",
//!   <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html>
//! - units: "DynamoDB read and write operations",
//!   <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/read-write-operations.html>

use serde_json::{Map, Value};

/// One write capacity unit covers a write of up to 1 KB.
pub const WRITE_UNIT_BYTES: u64 = 1024;
/// One read capacity unit covers a (strongly consistent) read of up to 4 KB.
pub const READ_UNIT_BYTES: u64 = 4096;

/// How a read is done, which sets what one 4 KB unit of it costs.
///
/// "A strongly consistent read request of an item up to 4 KB requires one
/// read unit. An eventually consistent read request ... one-half read unit.
/// A transactional read request ... two read units." (read-write-operations)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Eventual,
    Strong,
    Transactional,
}

impl Read {
    /// Read units per started 4 KB.
    pub fn factor(self) -> f64 {
        match self {
            Read::Eventual => 0.5,
            Read::Strong => 1.0,
            Read::Transactional => 2.0,
        }
    }

    /// `ConsistentRead: true` → strong, anything else → eventual (the default).
    pub fn from_consistent(consistent: bool) -> Read {
        if consistent {
            Read::Strong
        } else {
            Read::Eventual
        }
    }
}

/// How a write is done: a transactional write costs twice a standard one
/// ("Transactional write requests require 2 write units for items up to
/// 1 KB", read-write-operations / transaction-apis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Standard,
    Transactional,
}

impl Write {
    /// Write units per started 1 KB.
    pub fn factor(self) -> f64 {
        match self {
            Write::Standard => 1.0,
            Write::Transactional => 2.0,
        }
    }
}

/// Write units for writing `bytes`: rounded up to the next 1 KB, at least one
/// unit ("Item sizes for writes are rounded up to the next 1 KB multiple").
pub fn write_units(bytes: u64, kind: Write) -> f64 {
    bytes.div_ceil(WRITE_UNIT_BYTES).max(1) as f64 * kind.factor()
}

/// Read units for reading `bytes` in one piece: rounded up to the next 4 KB,
/// at least one unit (a read of a missing item still costs the minimum).
///
/// For `Query` and `Scan`, `bytes` is the total of all items read: "the sum
/// of all items ... rounded up to the next 4 KB boundary". For `GetItem`,
/// `BatchGetItem` and `TransactGetItems` call it once per item.
pub fn read_units(bytes: u64, kind: Read) -> f64 {
    bytes.div_ceil(READ_UNIT_BYTES).max(1) as f64 * kind.factor()
}

/// Size of a whole item: the sum of its attribute names and values.
pub fn item_size(item: &Map<String, Value>) -> u64 {
    item.iter()
        .map(|(name, value)| name.len() as u64 + value_size(value))
        .sum()
}

/// Size of one attribute value (without its name), from its DynamoDB JSON
/// form (`{"S": "..."}`, `{"N": "12.5"}`, `{"L": [...]}`, ...).
///
/// - String: its UTF-8 bytes. Binary: its raw (base64-decoded) bytes.
/// - Number: 1 byte per two significant digits, plus 1 byte.
/// - Boolean and null: 1 byte.
/// - List and map: 3 bytes of overhead, plus each element's size, plus
///   1 byte per element (a map element also counts its name).
/// - Sets: no overhead, the sum of each element sized as its scalar type.
///
/// Anything that is not a well-formed attribute value counts 0: the proxy
/// leaves malformed requests to DynamoDB Local to reject.
pub fn value_size(value: &Value) -> u64 {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    let each = |f: fn(&str) -> u64| -> u64 {
        inner
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(f).sum())
            .unwrap_or(0)
    };
    match kind.as_str() {
        "S" => inner.as_str().map_or(0, |s| s.len() as u64),
        "N" => inner.as_str().map_or(0, number_size),
        "B" => inner.as_str().map_or(0, base64_decoded_len),
        "BOOL" | "NULL" => 1,
        "SS" => each(|s| s.len() as u64),
        "NS" => each(number_size),
        "BS" => each(base64_decoded_len),
        "L" => {
            3 + inner
                .as_array()
                .map(|a| a.iter().map(|e| value_size(e) + 1).sum())
                .unwrap_or(0)
        }
        "M" => {
            3 + inner
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| k.len() as u64 + value_size(v) + 1)
                        .sum()
                })
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// "Numbers are variable length, with up to 38 significant digits. Leading
/// and trailing zeroes are trimmed. The size of a number is approximately
/// (1 byte per two significant digits) + (1 byte)."
pub fn number_size(number: &str) -> u64 {
    let mantissa = number
        .split(['e', 'E'])
        .next()
        .unwrap_or("")
        .trim_start_matches(['-', '+']);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len() as u64;
    significant.div_ceil(2) + 1
}

/// Raw length of a base64 value, without decoding it: "the value's raw byte
/// length is used for calculating size".
pub fn base64_decoded_len(encoded: &str) -> u64 {
    let chars = encoded.trim_end_matches('=').len() as u64;
    chars * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn reads_round_up_to_4kb() {
        // "reading a 3,500-byte item consumes the same throughput as reading a 4 KB item"
        assert_eq!(read_units(3_500, Read::Strong), 1.0);
        assert_eq!(read_units(4_096, Read::Strong), 1.0);
        // "if your item size is 8 KB, you require 2 read units to sustain one strongly
        // consistent read, 1 read unit for eventual, or 4 read units for transactional"
        assert_eq!(read_units(8 * 1024, Read::Strong), 2.0);
        assert_eq!(read_units(8 * 1024, Read::Eventual), 1.0);
        assert_eq!(read_units(8 * 1024, Read::Transactional), 4.0);
        // GetItem: "If you read a 10 KB item, DynamoDB rounds the item size to 12 KB."
        assert_eq!(read_units(10 * 1024, Read::Strong), 3.0);
        // a missing item still costs the minimum
        assert_eq!(read_units(0, Read::Eventual), 0.5);
        assert_eq!(read_units(0, Read::Transactional), 2.0);
    }

    #[test]
    fn batch_get_rounds_each_item_query_rounds_the_total() {
        // BatchGetItem: "two items of 1.5 KB and 6.5 KB ... 12 KB (4 KB + 8 KB), not 8 KB"
        let each = read_units(1_536, Read::Strong) + read_units(6_656, Read::Strong);
        assert_eq!(each, 3.0);
        assert_eq!(read_units(1_536 + 6_656, Read::Strong), 2.0);
        // Query: "10 items whose combined size is 40.8 KB ... rounds to 44 KB"
        assert_eq!(read_units(41_779, Read::Strong), 11.0);
        // Query: "1500 items of 64 bytes each, the cumulative size is 96 KB"
        assert_eq!(read_units(1_500 * 64, Read::Strong), 24.0);
    }

    #[test]
    fn writes_round_up_to_1kb_and_transactions_cost_double() {
        assert_eq!(write_units(500, Write::Standard), 1.0);
        assert_eq!(write_units(1_024, Write::Standard), 1.0);
        assert_eq!(write_units(1_025, Write::Standard), 2.0);
        assert_eq!(write_units(3_500, Write::Standard), 4.0);
        assert_eq!(write_units(0, Write::Standard), 1.0);
        // "2 WCU per KB" for a transactional write
        assert_eq!(write_units(1_024, Write::Transactional), 2.0);
        assert_eq!(write_units(3_500, Write::Transactional), 8.0);
    }

    #[test]
    fn strings_binary_bool_null() {
        // name bytes + UTF-8 bytes
        assert_eq!(item_size(&item(json!({"name": {"S": "Alice"}}))), 4 + 5);
        // UTF-8, not chars: "é" is 2 bytes
        assert_eq!(item_size(&item(json!({"n": {"S": "é"}}))), 1 + 2);
        // binary counts raw bytes: "aGVsbG8=" is "hello"
        assert_eq!(item_size(&item(json!({"b": {"B": "aGVsbG8="}}))), 1 + 5);
        assert_eq!(item_size(&item(json!({"ok": {"BOOL": true}}))), 2 + 1);
        assert_eq!(item_size(&item(json!({"gone": {"NULL": true}}))), 4 + 1);
    }

    #[test]
    fn numbers_count_significant_digits() {
        assert_eq!(number_size("123"), 2 + 1);
        assert_eq!(number_size("1234"), 2 + 1);
        assert_eq!(number_size("12345"), 3 + 1);
        // leading and trailing zeroes are trimmed
        assert_eq!(number_size("1000"), 1 + 1);
        assert_eq!(number_size("0.00100"), 1 + 1);
        assert_eq!(number_size("-12.5"), 2 + 1);
        assert_eq!(number_size("0"), 1);
        // 38 significant digits at most: 19 + 1 bytes
        assert_eq!(number_size("12345678901234567890123456789012345678"), 20);
        assert_eq!(item_size(&item(json!({"qty": {"N": "42"}}))), 3 + 2);
    }

    #[test]
    fn lists_maps_and_sets() {
        // empty list/map: name + 3
        assert_eq!(item_size(&item(json!({"l": {"L": []}}))), 1 + 3);
        assert_eq!(item_size(&item(json!({"m": {"M": {}}}))), 1 + 3);
        // list: 3 + each element's size + 1 per element
        let list = json!({"l": {"L": [{"S": "ab"}, {"N": "7"}]}});
        assert_eq!(item_size(&item(list)), 1 + 3 + (2 + 1) + (2 + 1));
        // map: element names count too
        let map = json!({"m": {"M": {"k": {"S": "v"}, "nested": {"L": []}}}});
        assert_eq!(item_size(&item(map)), 1 + 3 + (1 + 1 + 1) + (6 + 3 + 1));
        // sets: no overhead, elements sized as scalars without names
        let sets = json!({"ss": {"SS": ["a", "bcd"]}, "ns": {"NS": ["1", "22222"]}, "bs": {"BS": ["AAAA"]}});
        assert_eq!(item_size(&item(sets)), (2 + 4) + (2 + 2 + 4) + (2 + 3));
    }

    #[test]
    fn a_1kb_test_item_is_one_unit() {
        // the integration tests build "1 KB" items this way: pk + a padding string
        let pad = "x".repeat(1_000);
        let it = item(json!({"pk": {"S": "hot"}, "pad": {"S": pad}}));
        let size = item_size(&it);
        assert!(size <= 1_024, "{size}");
        assert_eq!(write_units(size, Write::Standard), 1.0);
        assert_eq!(write_units(size, Write::Transactional), 2.0);
    }
}
