-- How far each consumer (projection, search index, process manager) has
-- applied each Kafka partition. A partitioned source interleaves streams,
-- so one position per consumer cannot say that a write is visible; the
-- highest position applied per partition can (within a partition, events
-- arrive in position order). Written in the same transaction as the
-- consumer's own effects.
CREATE TABLE consumer_partitions (
    consumer text NOT NULL,
    partition integer NOT NULL,
    partitions integer NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (consumer, partition)
);
