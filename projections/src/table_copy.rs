//! Empty copies of a projection's live tables in a schema of their own:
//! a rebuild's, filled and then moved into `public`, and a verification's
//! scratch tables. Each copy is made from what `public` holds, so the
//! migrations stay the one definition of a read model's tables.

/// An empty copy of `public.table` in `schema`, with its primary key and
/// unique constraints and indexes (what the projection's upserts need)
/// but none of its other indexes: a bulk load is faster without them, and
/// `build_other_indexes` adds them once the copy is full.
pub(crate) async fn copy_table(conn: &mut sqlx::PgConnection, schema: &str, table: &str, unlogged: bool) -> Result<(), sqlx::Error> {
    let kind = if unlogged { "UNLOGGED TABLE" } else { "TABLE" };
    sqlx::query(&format!("CREATE {kind} {schema}.{table} (LIKE public.{table} INCLUDING ALL EXCLUDING INDEXES)"))
        .execute(&mut *conn)
        .await?;
    let constraints: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = ('public.' || $1)::regclass AND contype IN ('p', 'u', 'x') ORDER BY conname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    for (name, definition) in constraints {
        sqlx::query(&format!("ALTER TABLE {schema}.{table} ADD CONSTRAINT {name} {definition}")).execute(&mut *conn).await?;
    }
    for index in index_definitions(conn, schema, table, true).await? {
        sqlx::query(&index).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds to `schema.table` the indexes of `public.table` that `copy_table`
/// left out.
pub(crate) async fn build_other_indexes(conn: &mut sqlx::PgConnection, schema: &str, table: &str) -> Result<(), sqlx::Error> {
    for index in index_definitions(conn, schema, table, false).await? {
        sqlx::query(&index).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The statements creating `public.table`'s indexes that back no
/// constraint, unique or not, aimed at `schema.table`.
async fn index_definitions(conn: &mut sqlx::PgConnection, schema: &str, table: &str, unique: bool) -> Result<Vec<String>, sqlx::Error> {
    let definitions: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
          WHERE i.indrelid = ('public.' || $1)::regclass AND i.indisunique = $2
            AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
          ORDER BY i.indexrelid",
    )
    .bind(table)
    .bind(unique)
    .fetch_all(&mut *conn)
    .await?;
    Ok(definitions.into_iter().map(|d| d.replace(&format!(" ON public.{table} "), &format!(" ON {schema}.{table} "))).collect())
}
