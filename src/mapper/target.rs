//! The target names a mapping may write, per entity: [`resolve`] turns a name from a mapping
//! file into a [`Target`] (its [`Slot`] in the unified model, its [`ValueType`], whether it
//! takes a list and whether the entity requires it), and [`target_names`] lists them.
//!
//! The tables here are the single source of truth for target names; the record builder
//! matches on [`Slot`] exhaustively, so a name in a table always lands somewhere.

use crate::model::EntityKind;

/// The type a source value is coerced into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    String,
    Integer,
    Decimal,
    Bool,
    Date,
    Datetime,
}

impl ValueType {
    pub const NAMES: [&'static str; 6] =
        ["string", "integer", "decimal", "bool", "date", "datetime"];

    pub fn parse(name: &str) -> Option<ValueType> {
        Some(match name {
            "string" => ValueType::String,
            "integer" => ValueType::Integer,
            "decimal" => ValueType::Decimal,
            "bool" => ValueType::Bool,
            "date" => ValueType::Date,
            "datetime" => ValueType::Datetime,
            _ => return None,
        })
    }
}

/// Where a target's value goes in the unified model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    SourceId,
    Kind,
    Name,
    GivenName,
    FamilyName,
    Company,
    Email,
    Emails,
    Phone,
    Phones,
    /// `address.line1..3` as 0..2.
    AddressLine(usize),
    AddressCity,
    AddressRegion,
    AddressPostcode,
    AddressCountry,
    /// `identifier.<scheme>`.
    Identifier(String),
    BirthDate,
    CreatedAt,
    UpdatedAt,
    /// `extra.<name>`.
    Extra(String),
    OrderNumber,
    CustomerId,
    OrderId,
    OrderedAt,
    Status,
    Currency,
    Total,
    LineNumber,
    Sku,
    Description,
    Quantity,
    UnitPrice,
    LineTotal,
    PromisedDate,
    Category,
    UnitOfMeasure,
    ListPrice,
    Location,
    OnHand,
    Reserved,
    Available,
    OnOrder,
    AsOf,
    Country,
    SupplierId,
    LeadTimeDays,
    MinOrderQuantity,
    UnitCost,
}

/// A resolved target name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub slot: Slot,
    pub ty: ValueType,
    /// `emails` and `phones` take every value a source yields.
    pub list: bool,
    /// The record cannot be built without it (after the entity's own defaults).
    pub required: bool,
}

/// Whether a name is a header field or a field of one order line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Header,
    Line,
}

type Entry = (&'static str, Slot, ValueType);

use Slot as S;
use ValueType as T;

const CUSTOMER: &[Entry] = &[
    ("source_id", S::SourceId, T::String),
    ("kind", S::Kind, T::String),
    ("name", S::Name, T::String),
    ("given_name", S::GivenName, T::String),
    ("family_name", S::FamilyName, T::String),
    ("company", S::Company, T::String),
    ("email", S::Email, T::String),
    ("emails", S::Emails, T::String),
    ("phone", S::Phone, T::String),
    ("phones", S::Phones, T::String),
    ("address.line1", S::AddressLine(0), T::String),
    ("address.line2", S::AddressLine(1), T::String),
    ("address.line3", S::AddressLine(2), T::String),
    ("address.city", S::AddressCity, T::String),
    ("address.region", S::AddressRegion, T::String),
    ("address.postcode", S::AddressPostcode, T::String),
    ("address.country", S::AddressCountry, T::String),
    ("birth_date", S::BirthDate, T::Date),
    ("created_at", S::CreatedAt, T::Datetime),
    ("updated_at", S::UpdatedAt, T::Datetime),
];

const ORDER: &[Entry] = &[
    ("source_id", S::SourceId, T::String),
    ("order_number", S::OrderNumber, T::String),
    ("customer_id", S::CustomerId, T::String),
    ("ordered_at", S::OrderedAt, T::Datetime),
    ("status", S::Status, T::String),
    ("currency", S::Currency, T::String),
    ("total", S::Total, T::Decimal),
];

const ORDER_LINE: &[Entry] = &[
    ("line_number", S::LineNumber, T::String),
    ("sku", S::Sku, T::String),
    ("description", S::Description, T::String),
    ("quantity", S::Quantity, T::Decimal),
    ("unit_price", S::UnitPrice, T::Decimal),
    ("line_total", S::LineTotal, T::Decimal),
    ("promised_date", S::PromisedDate, T::Date),
];

/// An order line read on its own (`entity = "order_line"`): the key of the line, the order it
/// belongs to, and the same fields as a line under `[lines.fields]`.
const ORDER_LINE_ITEM: &[Entry] = &[
    ("source_id", S::SourceId, T::String),
    ("order_id", S::OrderId, T::String),
    ("line_number", S::LineNumber, T::String),
    ("sku", S::Sku, T::String),
    ("description", S::Description, T::String),
    ("quantity", S::Quantity, T::Decimal),
    ("unit_price", S::UnitPrice, T::Decimal),
    ("line_total", S::LineTotal, T::Decimal),
    ("promised_date", S::PromisedDate, T::Date),
];

const PRODUCT: &[Entry] = &[
    ("source_id", S::SourceId, T::String),
    ("sku", S::Sku, T::String),
    ("name", S::Name, T::String),
    ("category", S::Category, T::String),
    ("unit_of_measure", S::UnitOfMeasure, T::String),
    ("list_price", S::ListPrice, T::Decimal),
    ("currency", S::Currency, T::String),
];

const INVENTORY: &[Entry] = &[
    ("source_id", S::SourceId, T::String),
    ("sku", S::Sku, T::String),
    ("location", S::Location, T::String),
    ("on_hand", S::OnHand, T::Decimal),
    ("reserved", S::Reserved, T::Decimal),
    ("available", S::Available, T::Decimal),
    ("on_order", S::OnOrder, T::Decimal),
    ("as_of", S::AsOf, T::Datetime),
];

const SUPPLIER: &[Entry] = &[
    ("source_id", S::SourceId, T::String),
    ("name", S::Name, T::String),
    ("country", S::Country, T::String),
    ("email", S::Email, T::String),
    ("phone", S::Phone, T::String),
];

const SUPPLIER_ITEM: &[Entry] = &[
    ("source_id", S::SourceId, T::String),
    ("supplier_id", S::SupplierId, T::String),
    ("sku", S::Sku, T::String),
    ("lead_time_days", S::LeadTimeDays, T::Integer),
    ("min_order_quantity", S::MinOrderQuantity, T::Decimal),
    ("unit_cost", S::UnitCost, T::Decimal),
    ("currency", S::Currency, T::String),
];

fn table(entity: EntityKind, scope: Scope) -> &'static [Entry] {
    match (entity, scope) {
        (EntityKind::Customer, Scope::Header) => CUSTOMER,
        (EntityKind::Order, Scope::Header) => ORDER,
        (EntityKind::Order, Scope::Line) => ORDER_LINE,
        (EntityKind::OrderLine, Scope::Header) => ORDER_LINE_ITEM,
        (EntityKind::Product, Scope::Header) => PRODUCT,
        (EntityKind::Inventory, Scope::Header) => INVENTORY,
        (EntityKind::Supplier, Scope::Header) => SUPPLIER,
        (EntityKind::SupplierItem, Scope::Header) => SUPPLIER_ITEM,
        (_, Scope::Line) => &[],
    }
}

const IDENTIFIER: &str = "identifier.";
const EXTRA: &str = "extra.";

fn has_identifiers(entity: EntityKind) -> bool {
    matches!(entity, EntityKind::Customer | EntityKind::Supplier)
}

/// The names an entity's mapping may write (header fields; `identifier.<scheme>` and
/// `extra.<name>` stand for their families).
pub fn target_names(entity: EntityKind) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = table(entity, Scope::Header).iter().map(|e| e.0).collect();
    if has_identifiers(entity) {
        names.push("identifier.<scheme>");
    }
    if entity == EntityKind::Customer {
        names.push("extra.<name>");
    }
    names
}

/// The names one order line may write (under `[lines.fields]`).
pub fn line_target_names() -> Vec<&'static str> {
    ORDER_LINE.iter().map(|e| e.0).collect()
}

/// Targets every mapping of the entity must have a rule for (the entity has no default).
pub fn required_rules(entity: EntityKind) -> &'static [&'static str] {
    match entity {
        EntityKind::Customer | EntityKind::Order | EntityKind::Supplier => &["source_id"],
        EntityKind::OrderLine => &["source_id", "order_id"],
        EntityKind::Product | EntityKind::Inventory => &["sku"],
        EntityKind::SupplierItem => &["supplier_id", "sku"],
    }
}

fn is_required(entity: EntityKind, slot: &Slot) -> bool {
    match slot {
        Slot::SourceId => true,
        Slot::Sku => matches!(
            entity,
            EntityKind::Product | EntityKind::Inventory | EntityKind::SupplierItem
        ),
        Slot::SupplierId | Slot::OrderId => true,
        _ => false,
    }
}

fn family_key(name: &str, prefix: &str, what: &str) -> Result<String, String> {
    let key = &name[prefix.len()..];
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!(
            "invalid target `{name}`: the {what} after `{prefix}` must be lower-case letters, \
             digits or `_`"
        ))
    }
}

/// Resolves a target name, or says why it is not one (with a did-you-mean).
pub fn resolve(entity: EntityKind, scope: Scope, name: &str) -> Result<Target, String> {
    let found = table(entity, scope)
        .iter()
        .find(|e| e.0 == name)
        .map(|(_, slot, ty)| (slot.clone(), *ty));
    let (slot, ty) = match found {
        Some(found) => found,
        None if scope == Scope::Header
            && has_identifiers(entity)
            && name.starts_with(IDENTIFIER) =>
        {
            (
                Slot::Identifier(family_key(name, IDENTIFIER, "scheme")?),
                ValueType::String,
            )
        }
        None if scope == Scope::Header
            && entity == EntityKind::Customer
            && name.starts_with(EXTRA) =>
        {
            (
                Slot::Extra(family_key(name, EXTRA, "name")?),
                ValueType::String,
            )
        }
        None => {
            let (names, what) = match scope {
                Scope::Header => (target_names(entity), format!("{entity}")),
                Scope::Line => (line_target_names(), "an order line".to_owned()),
            };
            return Err(format!(
                "unknown target `{name}` for {what}{}",
                did_you_mean(name, names.iter().copied())
            ));
        }
    };
    Ok(Target {
        name: name.to_owned(),
        list: matches!(slot, Slot::Emails | Slot::Phones),
        required: scope == Scope::Header && is_required(entity, &slot),
        slot,
        ty,
    })
}

/// ` (did you mean `x`?)` for the closest candidate, or nothing when none is close.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_plain_and_family_names() {
        let t = resolve(EntityKind::Customer, Scope::Header, "address.country").unwrap();
        assert_eq!(t.slot, Slot::AddressCountry);
        let t = resolve(EntityKind::Customer, Scope::Header, "identifier.vat").unwrap();
        assert_eq!(t.slot, Slot::Identifier("vat".into()));
        let t = resolve(EntityKind::Customer, Scope::Header, "emails").unwrap();
        assert!(t.list);
        assert!(
            resolve(EntityKind::Customer, Scope::Header, "source_id")
                .unwrap()
                .required
        );
        assert!(
            resolve(EntityKind::Product, Scope::Header, "sku")
                .unwrap()
                .required
        );
        assert!(
            !resolve(EntityKind::Product, Scope::Header, "name")
                .unwrap()
                .required
        );
        let t = resolve(EntityKind::Order, Scope::Line, "quantity").unwrap();
        assert_eq!(t.ty, ValueType::Decimal);
        assert!(!t.required);
    }

    #[test]
    fn unknown_names_suggest_the_closest() {
        assert_eq!(
            resolve(EntityKind::Customer, Scope::Header, "emial").unwrap_err(),
            "unknown target `emial` for customer (did you mean `email`?)"
        );
        assert_eq!(
            resolve(EntityKind::Order, Scope::Line, "quantiy").unwrap_err(),
            "unknown target `quantiy` for an order line (did you mean `quantity`?)"
        );
        assert_eq!(
            resolve(EntityKind::Product, Scope::Header, "zzz").unwrap_err(),
            "unknown target `zzz` for product"
        );
        assert_eq!(
            resolve(EntityKind::Customer, Scope::Header, "identifier.VAT").unwrap_err(),
            "invalid target `identifier.VAT`: the scheme after `identifier.` must be lower-case \
             letters, digits or `_`"
        );
        assert!(resolve(EntityKind::Product, Scope::Header, "extra.x").is_err());
    }

    #[test]
    fn names_are_listed() {
        let names = target_names(EntityKind::Customer);
        assert!(names.contains(&"address.postcode"));
        assert!(names.contains(&"identifier.<scheme>"));
        assert_eq!(line_target_names().len(), 7);
        assert_eq!(
            required_rules(EntityKind::SupplierItem),
            ["supplier_id", "sku"]
        );
    }
}
