"""One router per resource; each only translates HTTP to a service call and back."""
