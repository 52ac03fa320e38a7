"""Events between services over RabbitMQ: the producer's outbox and relay, the consumers' inbox.

Modules are imported directly (``services.common.messaging.relay``...), so importing this
package costs nothing and pulls in no broker client.
"""
