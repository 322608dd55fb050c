"""Webhooks: a generation's changes POSTed to the URL it named, signed per Standard Webhooks.
Each delivery is a job of kind `webhook`, enqueued by the statement that made the change
(migration 0010's webhook_outbox), delivered by the queue like any other job."""
