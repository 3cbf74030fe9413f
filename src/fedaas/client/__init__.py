"""The member agent and the HTTP transport every fedaas client uses."""
