"""callback_url deliveries: the dispatcher and where deliveries are kept."""
