"""sitok.losses"""
