//! Typed DynamoDB operations over the JSON protocol: what a lease table needs.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::aws::client::{Client, ClientConfig, DYNAMODB, wait_until_active};
use crate::error::Result;

/// A DynamoDB attribute value in the service's JSON form (`{"S": "x"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AttributeValue {
    /// A string.
    S(String),
    /// A number, as its decimal text.
    N(String),
    /// Binary, base64-encoded.
    B(String),
    /// A set of strings.
    SS(Vec<String>),
    /// A set of numbers.
    NS(Vec<String>),
    /// A boolean.
    BOOL(bool),
    /// Null (always `true`).
    NULL(bool),
    /// A list.
    L(Vec<AttributeValue>),
    /// A map.
    M(HashMap<String, AttributeValue>),
}

impl AttributeValue {
    /// The string of an `S` value.
    pub fn as_s(&self) -> Option<&str> {
        match self {
            AttributeValue::S(s) => Some(s),
            _ => None,
        }
    }

    /// The text of an `N` value.
    pub fn as_n(&self) -> Option<&str> {
        match self {
            AttributeValue::N(n) => Some(n),
            _ => None,
        }
    }

    /// The strings of an `SS` value.
    pub fn as_ss(&self) -> Option<&[String]> {
        match self {
            AttributeValue::SS(v) => Some(v),
            _ => None,
        }
    }
}

/// An item: attribute names to values.
pub type Item = HashMap<String, AttributeValue>;

/// A condition or update expression with its placeholders
/// (`#name` → attribute name, `:value` → value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expression {
    /// The expression text, such as `leaseCounter = :old`.
    pub text: String,
    /// `#placeholder` → attribute name.
    pub names: HashMap<String, String>,
    /// `:placeholder` → value.
    pub values: HashMap<String, AttributeValue>,
}

impl Expression {
    /// An expression with no placeholders yet.
    pub fn new(text: impl Into<String>) -> Expression {
        Expression {
            text: text.into(),
            ..Expression::default()
        }
    }

    /// Binds `#placeholder` to an attribute name.
    pub fn name(mut self, placeholder: &str, attribute: &str) -> Expression {
        self.names
            .insert(placeholder.to_owned(), attribute.to_owned());
        self
    }

    /// This expression and `clause` (bind its placeholders next).
    pub fn and(mut self, clause: &str) -> Expression {
        self.text = format!("{} AND ({clause})", self.text);
        self
    }

    /// Binds `:placeholder` to a value.
    pub fn value(mut self, placeholder: &str, value: AttributeValue) -> Expression {
        self.values.insert(placeholder.to_owned(), value);
        self
    }
}

/// What DescribeTable says about a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDescription {
    /// The table name.
    pub table_name: String,
    /// CREATING, UPDATING, DELETING or ACTIVE.
    pub table_status: String,
    /// The hash key attribute name.
    pub hash_key: Option<String>,
    /// The hash key's type (`S`, `N` or `B`), from the attribute definitions.
    pub hash_key_type: Option<String>,
    /// The sort (range) key attribute name, if the table has one.
    pub range_key: Option<String>,
}

/// How [`DynamoDbClient::create_table_with`] creates a table. The default
/// is an on-demand table without tags or deletion protection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateTableOptions {
    /// Provisioned read and write capacity units (`PROVISIONED` billing);
    /// `None` for on-demand (`PAY_PER_REQUEST`). Defaults to `None`.
    pub provisioned: Option<(u64, u64)>,
    /// Tags (key, value) put on the table as it is created. Defaults to none.
    pub tags: Vec<(String, String)>,
    /// Whether the table refuses DeleteTable until this is turned off.
    /// Defaults to false.
    pub deletion_protection: bool,
}

/// A DynamoDB client.
#[derive(Clone, Debug)]
pub struct DynamoDbClient {
    client: Client,
}

impl DynamoDbClient {
    /// A client for the DynamoDB endpoint that `config` resolves to.
    pub fn new(config: &ClientConfig) -> Result<DynamoDbClient> {
        Ok(DynamoDbClient {
            client: Client::new(DYNAMODB, config)?,
        })
    }

    /// Creates an on-demand (PAY_PER_REQUEST) table with a string hash key.
    pub fn create_table(&self, table: &str, hash_key: &str) -> Result<()> {
        self.create_table_with(table, hash_key, &CreateTableOptions::default())
    }

    /// Creates a table with a string hash key, billed, tagged and protected
    /// as `options` say.
    pub fn create_table_with(
        &self,
        table: &str,
        hash_key: &str,
        options: &CreateTableOptions,
    ) -> Result<()> {
        let mut input = json!({
            "TableName": table,
            "AttributeDefinitions": [{"AttributeName": hash_key, "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST",
        });
        if let Some((read, write)) = options.provisioned {
            input["BillingMode"] = json!("PROVISIONED");
            input["ProvisionedThroughput"] =
                json!({"ReadCapacityUnits": read, "WriteCapacityUnits": write});
        }
        if !options.tags.is_empty() {
            let tags: Vec<Value> = options
                .tags
                .iter()
                .map(|(k, v)| json!({"Key": k, "Value": v}))
                .collect();
            input["Tags"] = json!(tags);
        }
        if options.deletion_protection {
            input["DeletionProtectionEnabled"] = json!(true);
        }
        let _: Value = self.client.call("CreateTable", &input)?;
        Ok(())
    }

    /// Turns point-in-time recovery (continuous backups) of a table on or off.
    pub fn set_point_in_time_recovery(&self, table: &str, enabled: bool) -> Result<()> {
        let input = json!({
            "TableName": table,
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": enabled},
        });
        let _: Value = self.client.call("UpdateContinuousBackups", &input)?;
        Ok(())
    }

    /// Describes a table.
    pub fn describe_table(&self, table: &str) -> Result<TableDescription> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            table: TableJson,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct TableJson {
            table_name: String,
            table_status: String,
            #[serde(default)]
            key_schema: Option<Vec<KeyJson>>,
            #[serde(default)]
            attribute_definitions: Option<Vec<AttributeJson>>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct KeyJson {
            attribute_name: String,
            key_type: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct AttributeJson {
            attribute_name: String,
            attribute_type: String,
        }
        let reply: Reply = self
            .client
            .call("DescribeTable", &json!({"TableName": table}))?;
        let keys = reply.table.key_schema.unwrap_or_default();
        let key = |kind: &str| {
            keys.iter()
                .find(|k| k.key_type == kind)
                .map(|k| k.attribute_name.clone())
        };
        let hash_key = key("HASH");
        let hash_key_type = reply
            .table
            .attribute_definitions
            .unwrap_or_default()
            .into_iter()
            .find(|a| Some(&a.attribute_name) == hash_key.as_ref())
            .map(|a| a.attribute_type);
        Ok(TableDescription {
            table_name: reply.table.table_name,
            table_status: reply.table.table_status,
            range_key: key("RANGE"),
            hash_key,
            hash_key_type,
        })
    }

    /// Polls DescribeTable until the table is ACTIVE, for at most `timeout`.
    pub fn wait_until_active(&self, table: &str, timeout: Duration) -> Result<TableDescription> {
        wait_until_active(&format!("table {table}"), timeout, || {
            let description = self.describe_table(table)?;
            let status = description.table_status.clone();
            Ok((description, status))
        })
    }

    /// Deletes a table.
    pub fn delete_table(&self, table: &str) -> Result<()> {
        let _: Value = self
            .client
            .call("DeleteTable", &json!({"TableName": table}))?;
        Ok(())
    }

    /// Reads one item with a strongly consistent read.
    pub fn get_item(&self, table: &str, key: &Item) -> Result<Option<Item>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            item: Option<Item>,
        }
        let reply: Reply = self.client.call(
            "GetItem",
            &json!({"TableName": table, "Key": key, "ConsistentRead": true}),
        )?;
        Ok(reply.item)
    }

    /// Writes an item, if `condition` holds. A failed condition is a service
    /// error for which [`Error::is_condition_failed`](crate::Error::is_condition_failed) is true.
    pub fn put_item(&self, table: &str, item: &Item, condition: Option<&Expression>) -> Result<()> {
        let mut input = json!({"TableName": table, "Item": item});
        add_expressions(&mut input, None, condition);
        let _: Value = self.client.call("PutItem", &input)?;
        Ok(())
    }

    /// Applies `update` to an item, if `condition` holds, and returns the
    /// item as it is afterwards.
    pub fn update_item(
        &self,
        table: &str,
        key: &Item,
        update: &Expression,
        condition: Option<&Expression>,
    ) -> Result<Item> {
        let mut input = json!({"TableName": table, "Key": key, "ReturnValues": "ALL_NEW"});
        add_expressions(&mut input, Some(update), condition);
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            attributes: Option<Item>,
        }
        let reply: Reply = self.client.call("UpdateItem", &input)?;
        Ok(reply.attributes.unwrap_or_default())
    }

    /// Deletes an item, if `condition` holds.
    pub fn delete_item(
        &self,
        table: &str,
        key: &Item,
        condition: Option<&Expression>,
    ) -> Result<()> {
        let mut input = json!({"TableName": table, "Key": key});
        add_expressions(&mut input, None, condition);
        let _: Value = self.client.call("DeleteItem", &input)?;
        Ok(())
    }

    /// Reads every item of the table with strongly consistent reads,
    /// following every page.
    pub fn scan(&self, table: &str) -> Result<Vec<Item>> {
        self.scan_with(table, true)
    }

    /// Reads every item of the table, following every page; `consistent`
    /// false reads eventually consistent pages, billed at half the units.
    pub fn scan_with(&self, table: &str, consistent: bool) -> Result<Vec<Item>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            #[serde(default)]
            items: Option<Vec<Item>>,
            last_evaluated_key: Option<Item>,
        }
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut input = json!({"TableName": table, "ConsistentRead": consistent});
            if let Some(key) = &start {
                input["ExclusiveStartKey"] = json!(key);
            }
            let page: Reply = self.client.call("Scan", &input)?;
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key.filter(|k| !k.is_empty()) {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }
}

/// Puts the expression texts and their merged placeholders into a request.
fn add_expressions(input: &mut Value, update: Option<&Expression>, condition: Option<&Expression>) {
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    if let Some(u) = update {
        input["UpdateExpression"] = json!(u.text);
    }
    if let Some(c) = condition {
        input["ConditionExpression"] = json!(c.text);
    }
    for e in update.into_iter().chain(condition) {
        names.extend(e.names.iter());
        values.extend(e.values.iter());
    }
    if !names.is_empty() {
        input["ExpressionAttributeNames"] = json!(names);
    }
    if !values.is_empty() {
        input["ExpressionAttributeValues"] = json!(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_use_dynamodb_json() {
        let item: Item = serde_json::from_str(
            r#"{"leaseKey":{"S":"shardId-0"},"leaseCounter":{"N":"3"},"parentShardId":{"SS":["a","b"]},"x":{"NULL":true}}"#,
        )
        .unwrap();
        assert_eq!(item["leaseKey"].as_s(), Some("shardId-0"));
        assert_eq!(item["leaseCounter"].as_n(), Some("3"));
        assert_eq!(item["parentShardId"].as_ss().map(|s| s.len()), Some(2));
        assert_eq!(
            serde_json::to_string(&AttributeValue::N("1".into())).unwrap(),
            r#"{"N":"1"}"#
        );
    }

    #[test]
    fn merges_update_and_condition_placeholders() {
        let update = Expression::new("SET #c = :new")
            .name("#c", "leaseCounter")
            .value(":new", AttributeValue::N("2".into()));
        let cond = Expression::new("#c = :old")
            .name("#c", "leaseCounter")
            .value(":old", AttributeValue::N("1".into()));
        let mut input = json!({});
        add_expressions(&mut input, Some(&update), Some(&cond));
        assert_eq!(input["UpdateExpression"], "SET #c = :new");
        assert_eq!(input["ConditionExpression"], "#c = :old");
        assert_eq!(input["ExpressionAttributeNames"]["#c"], "leaseCounter");
        assert_eq!(input["ExpressionAttributeValues"][":old"]["N"], "1");
        assert_eq!(input["ExpressionAttributeValues"][":new"]["N"], "2");
    }
}
