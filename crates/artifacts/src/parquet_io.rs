//! Parquet (zstd) writing and validated reading over Arrow record batches.

use std::fs::File;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::schema::TableSchema;

/// zstd level 3: the library default; higher levels cost write time for little size on text.
const ZSTD_LEVEL: i32 = 3;

/// Write `batches` (all with `schema`) to `path` as zstd Parquet, atomically.
pub fn write_parquet(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .build();
    write_atomic(path, |file| {
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::parquet(path, e))?;
        for batch in batches {
            writer.write(batch).map_err(|e| Error::parquet(path, e))?;
        }
        writer.close().map_err(|e| Error::parquet(path, e))?;
        Ok(())
    })
}

/// Read every batch of a Parquet file as stored, without validation.
pub fn read_parquet_raw(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| Error::parquet(path, e))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::arrow(path, e))?;
    Ok((schema, batches))
}

/// Read a Parquet file as `table`: the schema is checked before any data is decoded, then
/// each batch is conformed (canonical types, required columns non-null, table's column order).
pub fn read_table(path: &Path, table: &TableSchema) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
    table.validate(path, builder.schema())?;
    let reader = builder.build().map_err(|e| Error::parquet(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::arrow(path, e))?;
        out.push(table.conform(path, &batch)?);
    }
    Ok(out)
}

/// Read `table` from `path` one record batch at a time (validated and conformed), so a large
/// file (an 8B model's representations) never sits in memory twice.
pub(crate) fn for_each_batch(
    path: &Path,
    table: &TableSchema,
    mut f: impl FnMut(&RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !path.is_file() {
        return Err(Error::Stage {
            path: path.to_path_buf(),
            reason: format!("`{}` table is missing; run its stage first", table.name),
        }
        .into());
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
    table.validate(path, builder.schema())?;
    let reader = builder.build().map_err(|e| Error::parquet(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::arrow(path, e))?;
        f(&table.conform(path, &batch)?)?;
    }
    Ok(())
}
