"""Services: accepting, processing, reconciling and telling; over the store and the queues."""
