"""The bus: JetStream streams, Envelope publishing, the transactional outbox and durable consumers."""
