-- A consumer fed from Kafka may receive a message that is not an event of
-- the log (garbage produced to the topic, a corrupt copy). It is parked
-- like a poison event, under the position and stream it claims; `origin`
-- says where it sat, and tells a retry to apply the log's own event at
-- that position (if the log has one of that stream) rather than trust it.
ALTER TABLE dead_letters ADD COLUMN origin text;
