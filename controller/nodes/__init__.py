"""What the controller does about nodes: dead agents passed over, lost nodes released."""
