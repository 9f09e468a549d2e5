"""The admin sub-app: keys, users and audit for RPA Manager's User API Keys."""
